"""Trainer: the Python loop around a compiled train step (fit / evaluate over numpy data)."""

import json
import math
import sys
import time
import warnings

import numpy as np

from ._checks import is_float_dtype, is_whole
from . import checkpoint, config
from . import distributed as _distributed
from .data import _arrays, _num_samples, batches
from .distributed.shard import shard
from .errors import CheckpointError, NonFiniteLossError
from .optim import schedules
from .runtime.modules import _named_arrays
from .runtime.scalars import step_scalar


def _log_softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _cross_entropy(logits, y, ignore_index, smoothing):
    """What nn.CrossEntropyLoss computes, in float64: logits [..., C], labels [...]; the mean
    over the labels that are not ignore_index (NaN when all are, as in PyTorch)."""
    logp = _log_softmax(logits.reshape(-1, logits.shape[-1]).astype("float64"))  # [M, C]
    y = y.reshape(-1)
    keep = np.ones(len(y), bool) if ignore_index is None else y != ignore_index
    nll = -logp[np.arange(len(y)), np.where(keep, y, 0)]
    term = (1.0 - smoothing) * nll - smoothing * logp.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float((term * keep).sum() / keep.sum())


def _check_labels(logits, y, ignore_index):
    """ValueError unless y holds class ids for logits [..., C]: shape [...], integers in
    [0, C) or ignore_index (numpy would read a negative id from the end, silently)."""
    if y.dtype.kind not in "iu" or logits.shape[:-1] != y.shape:
        raise ValueError(f"evaluate: cross entropy takes integer labels of the logits' shape "
                         f"less the class axis, {logits.shape[:-1]}; got labels {y.dtype} "
                         f"{y.shape}")
    counted = y[y != ignore_index] if ignore_index is not None else y
    if counted.size and (counted.min() < 0 or counted.max() >= logits.shape[-1]):
        raise ValueError(f"evaluate: labels must lie in [0, {logits.shape[-1]}) or "
                         f"ignore_index {ignore_index}, got values in [{counted.min()}, "
                         f"{counted.max()}]")


def _accuracy(outputs, y, ignore_index):
    """Argmax accuracy of outputs [..., C] against labels [...], over the labels that are not
    ignore_index; None when the outputs are not class scores for these labels."""
    if y.dtype.kind not in "iu" or outputs.shape[:-1] != y.shape:
        return None
    keep = np.ones(y.shape, bool) if ignore_index is None else y != ignore_index
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(((outputs.argmax(axis=-1) == y) & keep).sum() / keep.sum())


def _evaluable(manifest, loss):
    """Raise ValueError unless evaluate can compute this module's loss: built in for
    CrossEntropyLoss and MSELoss without extras, otherwise through Trainer(loss=...)."""
    kind = manifest.get("loss")
    if loss is None and (manifest.get("extras") or kind not in ("cross_entropy", "mse")):
        takes = f"a loss with extra inputs {[e['name'] for e in manifest['extras']]}" \
            if manifest.get("extras") else f"the loss {kind!r}"
        raise ValueError(f"evaluate: this module trains {takes}, which evaluate cannot rebuild "
                         f"from the manifest; pass the loss you compiled with: "
                         f"tvf.Trainer(module, loss=...)")


def _metrics(manifest, outputs, y, extras=(), loss=None):
    """{'loss'[, 'accuracy']} from predictions, matching the compiled loss: `loss` (the loss
    the module was compiled with) run eagerly on all of (outputs, y, *extras) when given;
    else cross entropy over [..., C] logits with the manifest's ignore_index and
    label_smoothing (unsmoothed when the manifest does not record it), or mean squared error.
    Accuracy: for integer labels of the outputs' shape less its last (class) axis, over the
    labels that are not ignore_index."""
    ignore = manifest.get("ignore_index")
    if loss is not None:
        value = float(np.asarray(loss(outputs, y, *extras)))
    elif manifest.get("loss") == "cross_entropy":
        _check_labels(outputs, y, ignore)
        value = _cross_entropy(outputs, y, ignore, float(manifest.get("label_smoothing", 0.0)))
    else:
        if outputs.shape != y.shape:  # numpy would broadcast [N, 1] against [N] to [N, N]
            raise ValueError(f"evaluate: mean squared error takes targets of the outputs' "
                             f"shape {outputs.shape}, got {y.shape}")
        # in float64, as the cross entropy: float16 squares past 65504 were inf (a finite
        # compiled loss of 11304 evaluated to inf)
        value = float(np.mean((outputs.astype(np.float64) - y.astype(np.float64)) ** 2))
    result = {"loss": value}
    accuracy = _accuracy(outputs, y, ignore)
    if accuracy is not None:
        result["accuracy"] = accuracy
    return result


def _extras_in_order(manifest, extras):
    """The loss's extra arrays as its positional arguments after (output, labels): one array,
    a tuple/list in order, or a dict by the names the manifest records; checked as step
    checks them."""
    specs = [(e["name"], e) for e in manifest.get("extras", ())]
    if extras is None and specs:
        raise ValueError(f"this module's loss takes extra inputs {[n for n, _ in specs]}: "
                         f"pass extras=")
    if extras is not None and not specs:
        raise ValueError("this module's loss takes no extra inputs, got extras=")
    return [] if extras is None else _named_arrays("evaluate", "extras", extras, specs,
                                                    lambda n: f"extra '{n}'")


_DEFAULT_BATCH = 32  # fit's batch size for a module taking any (Keras' default too)


def _loss_names(loss):
    """The names compile_training may record for a loss (manifest 'loss'): its `name`, else
    its type's name (today's, "function" for a function) or its own __name__."""
    return {getattr(loss, "name", None), type(loss).__name__, getattr(loss, "__name__", None)}


def _scalar_dtype(module):
    """The dtype of the module's step scalars (lr): a module of our own records it; one that
    only acts like a TrainingModule (tests' stand-ins) is taken as float64."""
    return module.manifest.get("scalar_dtype", "float64")


def _describe(schedule):
    """A schedule's description for checkpoints: its repr for tvf.optim.schedules, the
    function's name otherwise, None without one."""
    if schedule is None or isinstance(schedule, schedules.Schedule):
        return None if schedule is None else repr(schedule)
    return f"per-epoch function {getattr(schedule, '__qualname__', type(schedule).__name__)}"


class _Progress:
    """One line per epoch; redrawn in place on a terminal."""

    def __init__(self, enabled, stream=sys.stderr):
        self.enabled, self.stream = enabled, stream
        self.tty = enabled and stream.isatty()

    def update(self, epoch, epochs, done, total, loss, rate):
        if not self.tty:
            return
        width = 24
        bar = "#" * int(width * done / total) + "." * (width - int(width * done / total))
        self.stream.write(f"\repoch {epoch}/{epochs} [{bar}] {done}/{total} "
                          f"loss={loss:.4f} {rate:,.0f} samples/s")
        self.stream.flush()

    def end(self, epoch, epochs, summary):
        if not self.enabled:
            return
        text = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in summary.items() if k != "epoch")
        line = f"epoch {epoch}/{epochs} {text}"
        self.stream.write(f"\r{line}\033[K\n" if self.tty else line + "\n")
        self.stream.flush()


def _parameters_after(module):
    """What a non-finite loss did to the parameters, for its error: a NaN loss over finite
    parameters is the batch's (every label ignore_index: a mean over no sample, NaN as in
    PyTorch), where advice to lower the learning rate was wrong."""
    bad = [name for name, value in module.state_dict().items()
           if is_float_dtype(np.asarray(value).dtype) and not np.isfinite(value).all()]
    if not bad:
        return ("the parameters are all still finite, so the batch itself gave it (e.g. every "
                "label equal to ignore_index: a mean over no sample).")
    return (f"{len(bad)} parameter(s) are no longer finite (first: {bad[0]}): lower the "
            "learning rate, or clip gradients.")


class Trainer:
    """Drives a TrainingModule over numpy data: shuffled (seeded) batches, one compiled step
    per batch, validation after every epoch.

    lr_schedule: a schedule from ``tvf.optim.schedules`` (e.g. ``warmup(100, cosine(1e-3,
      900))``), called with ``module.step_count`` (steps taken so far) before every step and
      fed as that step's runtime lr; or, as before, any other function of the epoch (0-based)
      returning the lr of that whole epoch. None: the module's lr.
    loss: the loss the module was compiled with, for evaluate to run on the predictions
      (eagerly, on numpy). Needed for a loss evaluate cannot rebuild from the manifest: one
      with extra inputs (sample weights, masks) or of your own; optional for CrossEntropyLoss
      and MSELoss (give it to have label_smoothing counted when the manifest does not record
      it).

    >>> trainer = tvf.Trainer(module, seed=0)
    >>> history = trainer.fit(x_train, y_train, epochs=10, val=(x_test, y_test))
    >>> trainer.evaluate(x_test, y_test)["accuracy"]

    Several inputs and loss extras: ``trainer.fit((tokens, mask), labels, extras=weights,
    val=((tokens_val, mask_val), labels_val, weights_val))``.

    distributed: True trains data-parallel over the processes of an MPI job (``mpiexec -n 2
      python train.py``; see tvf.distributed): batch_size is each rank's, every global batch
      of ranks x batch_size samples (the epoch's shuffled order, the same on every rank) is
      dealt out by rank, gradients are averaged with one allreduce per step, and every rank
      applies the same update. Rank 0's parameters, optimizer state and trainer state
      (history, seed: a checkpoint read on rank 0 alone) go to every rank when fit starts;
      rank 0 alone prints progress, evaluates val (the others receive its metrics), writes
      checkpoints and exports. Needs compile_training(..., accumulate=True). Without a
      launcher it is a world of one, trained as without distributed.
    """

    def __init__(self, module, seed=0, lr_schedule=None, progress=None, loss=None,
                 distributed=False):
        if not (hasattr(module, "step") and hasattr(module, "manifest")):
            hint = (" (an nn.Module: compile it with tvf.compile_training first)"
                    if hasattr(module, "named_parameters") else "")
            raise TypeError(f"Trainer takes a compiled training module, got "
                            f"{type(module).__name__}{hint}")
        if not is_whole(seed, least=0):
            # -1, None, 1.5 failed only at fit, inside numpy
            raise ValueError(f"Trainer: seed must be an int >= 0, got {seed!r}")
        self.module = module
        self.seed = int(seed)
        if lr_schedule is not None and not callable(lr_schedule):
            # (a number failed in fit: "'float' object is not callable")
            raise TypeError(f"Trainer: lr_schedule must be a schedule, a function of the epoch "
                            f"or None, got {lr_schedule!r} (a fixed lr: the module's, "
                            f"module.lr = {lr_schedule!r})")
        self.lr_schedule = lr_schedule
        self.world = _distributed.init() if distributed else None
        self._parallel = (_distributed.DataParallel(module, self.world)
                          if distributed and self.world.size > 1 else None)
        show = config.progress_enabled() if progress is None else progress
        self.progress = _Progress(show and self.is_main)
        self.history = []
        self.loss = loss
        # the batch size of a module that takes any: set by fit, kept by checkpoints
        self.batch_size = None
        # within an epoch fit is running: {"steps", "losses", "sizes", "batch", "lr"} (the
        # batches done, their losses and sizes, the global batch size, the last lr), for
        # save_checkpoint from on_step; after load_checkpoint of such a checkpoint, where the
        # next fit resumes
        self._in_epoch = None
        compiled = module.manifest.get("loss")
        if loss is not None and compiled is not None and compiled not in _loss_names(loss):
            raise ValueError(f"Trainer: loss {getattr(loss, 'name', loss)!r} is not the loss "
                             f"this module was compiled with ({compiled!r})")
        for key in ("ignore_index", "label_smoothing"):  # a cross entropy's settings
            # (evaluate reported one loss's value with another's ignore_index in its accuracy)
            if loss is not None and key in module.manifest and hasattr(loss, key) and \
                    getattr(loss, key) != module.manifest[key]:
                raise ValueError(f"Trainer: loss has {key}={getattr(loss, key)!r}, but this "
                                 f"module was compiled with {key}={module.manifest[key]!r}")

    @property
    def is_main(self):
        """Whether this process prints, writes checkpoints and exports: rank 0 of a
        distributed run, and any process without distributed=True."""
        return self.world is None or self.world.rank == 0

    def _sync(self):
        """Rank 0's training state on every rank: the module's (parameters, buffers, optimizer
        state, step count, lr) and this trainer's seed, history, batch size and position within
        an epoch (a checkpoint's, saved from on_step)."""
        m = self.module
        self._parallel.broadcast_state()
        mine = {"seed": self.seed, "history": self.history, "batch_size": self.batch_size,
                "dropout_seed": m.manifest.get("seed"), "in_epoch": self._in_epoch}
        state = self.world.broadcast_json(mine, "the trainer state")
        self.seed, self.history, self.batch_size = state["seed"], state["history"], \
            state["batch_size"]
        self._in_epoch = state["in_epoch"]
        if state["dropout_seed"] is not None:
            m.manifest["seed"] = state["dropout_seed"]

    def _lr(self, epoch, step):
        """The lr of the coming step (None: the module's), checked: a schedule that returns a
        non-finite or negative lr stops the run naming the step, before the step runs."""
        s = self.lr_schedule
        if s is None:
            return None
        arg = self.module.step_count if isinstance(s, schedules.Schedule) else epoch
        lr = s(arg)
        try:  # the step's own check, named here by the schedule's call
            return step_scalar("a learning rate", lr, _scalar_dtype(self.module))
        except ValueError as err:
            raise ValueError(f"lr_schedule({arg}) returned {lr!r} for train step "
                             f"{self.module.step_count + 1} (epoch {epoch + 1}, batch {step}): "
                             f"{err}") from None

    def _batch_size(self, batch_size):
        """The batch size fit steps with: the compiled one for a module of one batch size
        (batch_size must be None or equal it); for a module taking any batch size,
        batch_size, else the last fit's or checkpoint's, else 32."""
        compiled = self.module.batch_size
        if batch_size is not None and not is_whole(batch_size, least=1):
            raise ValueError(f"fit: batch_size must be a positive int, got {batch_size!r}")
        if compiled is not None:
            if batch_size is not None and batch_size != compiled:
                raise ValueError(f"fit: batch_size={batch_size}, but this module's step is "
                                 f"compiled for batches of {compiled} only (compile with a "
                                 f"symbolic batch, e.g. inputs=('batch', ...), for any size)")
            return compiled
        self.batch_size = int(batch_size or self.batch_size or _DEFAULT_BATCH)
        return self.batch_size

    def fit(self, x, y, epochs=1, val=None, augment=None, extras=None, batch_size=None,
            on_step=None):
        """Train for `epochs` over (x, y); returns the history (one record per epoch: mean
        loss over the samples, the last step's lr, ...).

        x: an array, or for a model of several inputs a tuple/list of arrays in forward's
          argument order or a dict {argument name: array}, all with one entry per sample.
        extras: the loss's extra inputs (sample weights, masks), one array, a tuple or a dict,
          sliced per batch alongside x and y.
        val: (x, y) or (x, y, extras), evaluated after every epoch (see evaluate).
        augment: `augment(x_batch, rng) -> x_batch` transforms each training batch; x_batch
          has the structure x was passed in (a tuple of arrays for a tuple, ...).
        batch_size: for a module compiled for any batch size (``module.batch_size`` None),
          the batch size to train with (default: the last fit's, else 32); every batch is
          trained on, the last partial one too. A module compiled for one batch size trains
          in batches of that size and skips the last partial batch of each epoch (a warning
          says how many samples).
        on_step: ``on_step(module)`` after every optimizer step (``module.step_count`` counts
          them), e.g. to update pruning masks every k steps; on every rank when distributed.

        The batch order comes from seed + epoch and `rng` is seeded with (seed, epoch), so the
        epoch number and seed are the whole RNG state: a run resumed from a checkpoint draws
        what the uninterrupted run would have."""
        if not is_whole(epochs, least=0):
            # epochs=-1 returned [] and trained nothing
            raise ValueError(f"fit: epochs must be an int >= 0, got {epochs!r}")
        for name, fn in (("augment", augment), ("on_step", on_step)):
            if fn is not None and not callable(fn):
                raise TypeError(f"fit: {name} must be callable or None, got {fn!r}")
        m = self.module
        if self._parallel is not None:
            self._sync()  # before the batch size: a checkpoint read on rank 0 may set it
        ranks = 1 if self._parallel is None else self.world.size
        bs = self._batch_size(batch_size)
        n = _num_samples(_arrays(x, "x")[0] + [("y", np.asarray(y))]
                         + (_arrays(extras, "extras")[0] if extras is not None else []))
        partial = m.batch_size is None
        gbs = bs * ranks  # the global batch: each rank steps on its shard of bs samples
        steps = -(-n // gbs) if partial else n // gbs
        if steps == 0:
            raise ValueError(f"fit: {n} samples, fewer than one batch of {gbs}")
        if not partial and n % gbs and self.is_main:
            warnings.warn(f"fit: {n} samples make {steps} batches of {gbs}; the last {n % gbs} "
                          f"samples of each (shuffled) epoch are skipped, because this module's "
                          f"step is compiled for batches of {bs} only (compile with a symbolic "
                          f"batch, e.g. inputs=('batch', ...), to train on every sample)",
                          stacklevel=2)
        if val is not None:
            if not isinstance(val, (tuple, list)) or len(val) not in (2, 3):
                raise ValueError("fit: val must be (x, y) or (x, y, extras)")
            _evaluable(m.manifest, self.loss)  # before training, not after the first epoch
        start_epoch = len(self.history)
        resumed = self._in_epoch
        if epochs:
            self._in_epoch = None
        if resumed is not None and epochs and resumed["batch"] != gbs:
            raise ValueError(f"fit: the checkpoint was saved after {resumed['steps']} batches "
                             f"of {resumed['batch']} samples into epoch {start_epoch + 1}; "
                             f"it resumes only with batches of {resumed['batch']} (ranks x "
                             f"batch size), not {gbs}")
        for e in range(start_epoch, start_epoch + epochs):
            t0, losses, sizes = time.perf_counter(), [], []
            skip, lr = 0, None
            if resumed is not None and e == start_epoch:  # within the epoch a checkpoint left
                skip, losses, sizes = resumed["steps"], resumed["losses"], resumed["sizes"]
                lr = resumed["lr"]  # (the epoch's record when no step is left in it)
            # ranks augment their shards with draws of their own
            rng = np.random.default_rng((self.seed, e) if ranks == 1 else
                                        (self.seed, e, self.world.rank))
            for i, batch in enumerate(batches(x, y, gbs, shuffle=True, seed=self.seed + e,
                                              drop_last=not partial, extras=extras), 1):
                size = len(batch[1])  # the global batch's
                if ranks > 1:
                    batch = shard(batch, self.world.rank, ranks)
                xb, yb = batch[:2]
                if i <= skip:  # trained before the checkpoint: only its augment draws again
                    if augment is not None:
                        augment(xb, rng)
                    continue
                sizes.append(size)
                lr = self._lr(e, i)
                if augment is not None:
                    xb = augment(xb, rng)
                run = m.step if self._parallel is None else self._parallel.step
                losses.append(run(xb, yb, lr=lr, extras=batch[2] if len(batch) > 2 else None))
                if not math.isfinite(losses[-1]):
                    self.progress.end(e + 1, start_epoch + epochs, {"loss": losses[-1]})
                    raise NonFiniteLossError(
                        f"fit: the loss became {losses[-1]} at epoch {e + 1}, step {i} "
                        f"(train step {m.step_count}); {_parameters_after(m)} Compile under "
                        f"tvf.debug_nans() to name the op that first produced NaN/Inf.",
                        epoch=e + 1, step=i)
                self._in_epoch = {"steps": i, "losses": losses, "sizes": sizes, "batch": gbs,
                                  "lr": lr}
                if on_step is not None:
                    on_step(m)
                rate = sum(sizes) / (time.perf_counter() - t0)
                self.progress.update(e + 1, start_epoch + epochs, i, steps, losses[-1], rate)
            seconds = time.perf_counter() - t0
            # each step's loss is its batch's mean: weigh a partial batch by its size
            record = {"epoch": e + 1, "loss": float(np.dot(losses, sizes) / sum(sizes)),
                      "lr": m.lr if lr is None else lr,
                      "samples_per_s": round(sum(sizes) / seconds)}
            if val is not None:
                metrics = self.evaluate(*val) if self.is_main else {}
                if self._parallel is not None:  # the others wait for rank 0's metrics
                    metrics = self.world.broadcast_json(metrics, "the validation metrics")
                record.update({f"val_{k}": v for k, v in metrics.items()})
            self._in_epoch = None
            self.history.append(record)
            self.progress.end(e + 1, start_epoch + epochs, record)
        return self.history

    def save_checkpoint(self, path):
        """Write one safetensors file at `path`, atomically: parameters, optimizer state, step
        count (the schedule's position), epoch and seed (the RNG state of batch order and
        augmentation), the module's lr, the schedule's description, the batch size (of a
        module taking any) and history. `load_checkpoint` resumes from it. In a distributed
        run rank 0 alone writes (the ranks hold the same state); the others return None."""
        if not self.is_main:
            return None
        m = self.module
        meta = {"step": m.step_count, "epoch": len(self.history), "seed": self.seed,
                "lr": m.lr, "history": self.history, "target_key": m.manifest.get("target_key"),
                "optimizer": m.manifest["optimizer"]["name"],
                "optimizer_hyperparameters": m.manifest["optimizer"].get("hyperparameters", {}),
                "lr_schedule": _describe(self.lr_schedule)}
        if "seed" in m.manifest:  # dropout's key: a resumed run draws the masks it would have
            meta["dropout_seed"] = m.manifest["seed"]
        if self.batch_size is not None:  # the batches of a module taking any size
            meta["batch_size"] = self.batch_size
        if self.world is not None:  # informative: a resumed run may have another number
            meta["ranks"] = self.world.size
        if self._in_epoch is not None:  # saved from on_step: fit resumes within the epoch
            done = self._in_epoch
            meta["in_epoch"] = {"steps": done["steps"], "batch": done["batch"],
                                "losses": [float(v) for v in done["losses"]],
                                "sizes": [int(v) for v in done["sizes"]],
                                "lr": None if done["lr"] is None else float(done["lr"])}
        data = checkpoint.encode(m.state_dict(), m.optimizer_state(), meta)
        return checkpoint.write_atomic(path, data)

    def load_checkpoint(self, path):
        """Restore what save_checkpoint wrote into this trainer and its module, after checking
        that every name, shape and dtype fits the module (CheckpointError otherwise); the next
        fit continues as the saved run would have: same batches, augmentation draws and
        schedule position. A schedule that differs from the saved run's is a warning (the run
        then continues on the new schedule from the saved step). In a distributed run rank 0
        alone reads the file (the other ranks need no copy of it) and fit hands its state to
        the others, whatever number of ranks wrote it: the batch size is each rank's."""
        if self._parallel is not None and not self.is_main:
            return self
        m = self.module
        params, optim, meta = checkpoint.read(path)
        checkpoint.check_fits(path, "parameter", params,  # buffers (BatchNorm) count too
                              m.manifest["parameters"] + m.manifest.get("buffers", []))
        checkpoint.check_fits(path, "optimizer state tensor", optim,
                              m.manifest["optimizer"]["state"])
        if meta.get("optimizer") != m.manifest["optimizer"]["name"]:
            raise CheckpointError(f"{path}: saved with optimizer {meta.get('optimizer')}, this "
                                  f"module trains with {m.manifest['optimizer']['name']}")
        saved, mine = (meta.get("optimizer_hyperparameters"),  # (as JSON: tuples are lists)
                       json.loads(json.dumps(m.manifest["optimizer"].get("hyperparameters", {}))))
        if saved is not None and saved != mine:
            differ = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            warnings.warn(f"{path}: saved by a run whose {meta['optimizer']} had "
                          f"{', '.join(f'{k}={saved.get(k)!r}' for k in differ)}; this module's "
                          f"has {', '.join(f'{k}={mine.get(k)!r}' for k in differ)}: it "
                          f"continues from train step {meta['step']} with its own, not as the "
                          f"saved run would have", stacklevel=2)
        saved, mine = meta.get("lr_schedule"), _describe(self.lr_schedule)
        if "lr_schedule" in meta and saved != mine:
            warnings.warn(f"{path}: saved by a run with lr_schedule {saved}, this trainer has "
                          f"{mine}; it continues from train step {meta['step']} on its own "
                          f"schedule", stacklevel=2)
        try:  # checked before anything changes: a refused checkpoint leaves the module as is
            lr = step_scalar("lr", meta["lr"], _scalar_dtype(m))
        except ValueError as err:
            raise CheckpointError(f"{path}: checkpoint metadata {err}") from None
        m.load_state_dict(params)
        m.load_optimizer_state(optim)
        m.step_count, m.lr = meta["step"], lr
        if "dropout_seed" in meta and "seed" in m.manifest:
            m.manifest["seed"] = int(meta["dropout_seed"])
        self.seed, self.history = meta["seed"], list(meta["history"])
        self._in_epoch = meta.get("in_epoch")
        if meta.get("batch_size") is not None and m.batch_size is None:
            self.batch_size = int(meta["batch_size"])
        return self

    def export(self, path, **kwargs):
        """module.export(path, **kwargs) on rank 0 alone (in every process without
        distributed=True); returns the bundle's path there, None on the other ranks."""
        return self.module.export(path, **kwargs) if self.is_main else None

    def evaluate(self, x, y, extras=None):
        """{'loss', 'accuracy' (integer class labels)} on (x, y), from predict() (eval mode),
        over all the samples at once: x and extras as for fit.

        The loss is what the compiled loss computes on that data: the Trainer's `loss` run
        on (predictions, y, *extras) when given (needed for a loss with extras or of your
        own); else CrossEntropyLoss over logits [..., C] (e.g. a sequence's [B, T, V] with
        labels [B, T]) with the module's ignore_index, or MSELoss. label_smoothing counts only
        when the manifest records it; a manifest that does not gives the unsmoothed cross
        entropy (pass Trainer(loss=...) for the smoothed value). Accuracy counts the labels
        that are not ignore_index."""
        m = self.module
        _evaluable(m.manifest, self.loss)
        extra_arrays = _extras_in_order(m.manifest, extras)
        y = np.asarray(y)
        _num_samples(_arrays(x, "x")[0] + [("y", y)]
                     + [(f"extra '{e['name']}'", a) for e, a
                        in zip(m.manifest.get("extras", ()), extra_arrays)])
        return _metrics(m.manifest, m.predict(x), y, extra_arrays, self.loss)
