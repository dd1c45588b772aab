"""Trainer: the Python loop around a compiled train step (fit / evaluate over numpy data)."""

import math
import sys
import time
import warnings

import numpy as np

from . import checkpoint, config
from .data import batches
from .errors import CheckpointError, NonFiniteLossError
from .optim import schedules


def _metrics(kind, outputs, y):
    """Loss and accuracy from predictions, matching the compiled loss."""
    if kind == "cross_entropy":
        z = outputs - outputs.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return {"loss": float(-logp[np.arange(len(y)), y].mean()),
                "accuracy": float((outputs.argmax(axis=1) == y).mean())}
    return {"loss": float(np.mean((outputs - y) ** 2))}


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


class Trainer:
    """Drives a TrainingModule over numpy data: shuffled (seeded) batches, one compiled step
    per batch, validation after every epoch.

    lr_schedule: a schedule from ``tvf.optim.schedules`` (e.g. ``warmup(100, cosine(1e-3,
      900))``), called with ``module.step_count`` (steps taken so far) before every step and
      fed as that step's runtime lr; or, as before, any other function of the epoch (0-based)
      returning the lr of that whole epoch. None: the module's lr.

    >>> trainer = tvf.Trainer(module, seed=0)
    >>> history = trainer.fit(x_train, y_train, epochs=10, val=(x_test, y_test))
    >>> trainer.evaluate(x_test, y_test)["accuracy"]
    """

    def __init__(self, module, seed=0, lr_schedule=None, progress=None):
        self.module = module
        self.seed = seed
        self.lr_schedule = lr_schedule
        self.progress = _Progress(config.progress_enabled() if progress is None else progress)
        self.history = []

    def _lr(self, epoch, step):
        """The lr of the coming step (None: the module's), checked: a schedule that returns a
        non-finite or negative lr stops the run naming the step, before the step runs."""
        s = self.lr_schedule
        if s is None:
            return None
        arg = self.module.step_count if isinstance(s, schedules.Schedule) else epoch
        lr = s(arg)
        try:
            ok = math.isfinite(lr) and lr >= 0
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"lr_schedule({arg}) returned {lr!r} for train step "
                             f"{self.module.step_count + 1} (epoch {epoch + 1}, batch {step}): "
                             f"a learning rate must be a finite number >= 0")
        return float(lr)

    def fit(self, x, y, epochs=1, val=None, augment=None):
        """Train for `epochs` over (x, y); the last partial batch of each epoch is skipped
        (the step is compiled for one batch size). `augment(x_batch, rng) -> x_batch`
        transforms each training batch. The batch order comes from seed + epoch and `rng` is
        seeded with (seed, epoch), so the epoch number and seed are the whole RNG state: a run
        resumed from a checkpoint draws what the uninterrupted run would have. Returns the
        history (one record per epoch: mean loss, the last step's lr, ...)."""
        m = self.module
        steps = len(x) // m.batch_size
        if steps == 0:
            raise ValueError(f"fit: {len(x)} samples, fewer than one batch of {m.batch_size}")
        start_epoch = len(self.history)
        for e in range(start_epoch, start_epoch + epochs):
            t0, losses = time.perf_counter(), []
            rng = np.random.default_rng((self.seed, e))
            for i, (xb, yb) in enumerate(batches(x, y, m.batch_size, shuffle=True,
                                                 seed=self.seed + e), 1):
                lr = self._lr(e, i)
                if augment is not None:
                    xb = augment(xb, rng)
                losses.append(m.step(xb, yb, lr=lr))
                if not math.isfinite(losses[-1]):
                    self.progress.end(e + 1, start_epoch + epochs, {"loss": losses[-1]})
                    raise NonFiniteLossError(
                        f"fit: the loss became {losses[-1]} at epoch {e + 1}, step {i} "
                        f"(train step {m.step_count}); the parameters this step wrote are "
                        f"likely not finite either. Lower the learning rate, or compile under "
                        f"tvf.debug_nans() to name the op that first produced NaN/Inf.",
                        epoch=e + 1, step=i)
                rate = i * m.batch_size / (time.perf_counter() - t0)
                self.progress.update(e + 1, start_epoch + epochs, i, steps, losses[-1], rate)
            seconds = time.perf_counter() - t0
            record = {"epoch": e + 1, "loss": float(np.mean(losses)),
                      "lr": m.lr if lr is None else lr,
                      "samples_per_s": round(steps * m.batch_size / seconds)}
            if val is not None:
                record.update({f"val_{k}": v for k, v in self.evaluate(*val).items()})
            self.history.append(record)
            self.progress.end(e + 1, start_epoch + epochs, record)
        return self.history

    def save_checkpoint(self, path):
        """Write one safetensors file at `path`, atomically: parameters, optimizer state, step
        count (the schedule's position), epoch and seed (the RNG state of batch order and
        augmentation), the module's lr, the schedule's description and history.
        `load_checkpoint` resumes from it."""
        m = self.module
        meta = {"step": m.step_count, "epoch": len(self.history), "seed": self.seed,
                "lr": m.lr, "history": self.history, "target_key": m.manifest.get("target_key"),
                "optimizer": m.manifest["optimizer"]["name"],
                "lr_schedule": _describe(self.lr_schedule)}
        if "seed" in m.manifest:  # dropout's key: a resumed run draws the masks it would have
            meta["dropout_seed"] = m.manifest["seed"]
        data = checkpoint.encode(m.state_dict(), m.optimizer_state(), meta)
        return checkpoint.write_atomic(path, data)

    def load_checkpoint(self, path):
        """Restore what save_checkpoint wrote into this trainer and its module, after checking
        that every name, shape and dtype fits the module (CheckpointError otherwise); the next
        fit continues as the saved run would have: same batches, augmentation draws and
        schedule position. A schedule that differs from the saved run's is a warning (the run
        then continues on the new schedule from the saved step)."""
        m = self.module
        params, optim, meta = checkpoint.read(path)
        checkpoint.check_fits(path, "parameter", params,  # buffers (BatchNorm) count too
                              m.manifest["parameters"] + m.manifest.get("buffers", []))
        checkpoint.check_fits(path, "optimizer state tensor", optim,
                              m.manifest["optimizer"]["state"])
        if meta.get("optimizer") != m.manifest["optimizer"]["name"]:
            raise CheckpointError(f"{path}: saved with optimizer {meta.get('optimizer')}, this "
                                  f"module trains with {m.manifest['optimizer']['name']}")
        saved, mine = meta.get("lr_schedule"), _describe(self.lr_schedule)
        if "lr_schedule" in meta and saved != mine:
            warnings.warn(f"{path}: saved by a run with lr_schedule {saved}, this trainer has "
                          f"{mine}; it continues from train step {meta['step']} on its own "
                          f"schedule", stacklevel=2)
        m.load_state_dict(params)
        m.load_optimizer_state(optim)
        m.step_count, m.lr = int(meta["step"]), float(meta["lr"])
        if "dropout_seed" in meta and "seed" in m.manifest:
            m.manifest["seed"] = int(meta["dropout_seed"])
        self.seed, self.history = meta["seed"], list(meta["history"])
        return self

    def evaluate(self, x, y):
        """{'loss', 'accuracy' (classification)} on (x, y), computed from predict()."""
        return _metrics(self.module.manifest.get("loss"), self.module.predict(x), y)
