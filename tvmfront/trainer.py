"""Trainer: the Python loop around a compiled train step (fit / evaluate over numpy data)."""

import math
import sys
import time

import numpy as np

from . import checkpoint, config
from .data import batches
from .errors import CheckpointError, NonFiniteLossError


def _metrics(kind, outputs, y):
    """Loss and accuracy from predictions, matching the compiled loss."""
    if kind == "cross_entropy":
        z = outputs - outputs.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return {"loss": float(-logp[np.arange(len(y)), y].mean()),
                "accuracy": float((outputs.argmax(axis=1) == y).mean())}
    return {"loss": float(np.mean((outputs - y) ** 2))}


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

    >>> trainer = tvf.Trainer(module, seed=0)
    >>> history = trainer.fit(x_train, y_train, epochs=10, val=(x_test, y_test))
    >>> trainer.evaluate(x_test, y_test)["accuracy"]
    """

    def __init__(self, module, seed=0, lr_schedule=None, progress=None):
        self.module = module
        self.seed = seed
        self.lr_schedule = lr_schedule  # epoch (0-based) -> learning rate, or None
        self.progress = _Progress(config.progress_enabled() if progress is None else progress)
        self.history = []

    def fit(self, x, y, epochs=1, val=None, augment=None):
        """Train for `epochs` over (x, y); the last partial batch of each epoch is skipped
        (the step is compiled for one batch size). `augment(x_batch, rng) -> x_batch`
        transforms each training batch (rng is seeded per epoch). Returns the history."""
        m = self.module
        steps = len(x) // m.batch_size
        if steps == 0:
            raise ValueError(f"fit: {len(x)} samples, fewer than one batch of {m.batch_size}")
        start_epoch = len(self.history)
        for e in range(start_epoch, start_epoch + epochs):
            lr = self.lr_schedule(e) if self.lr_schedule else None
            t0, losses = time.perf_counter(), []
            rng = np.random.default_rng((self.seed, e))
            for i, (xb, yb) in enumerate(batches(x, y, m.batch_size, shuffle=True,
                                                 seed=self.seed + e), 1):
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
                      "samples_per_s": round(steps * m.batch_size / seconds)}
            if val is not None:
                record.update({f"val_{k}": v for k, v in self.evaluate(*val).items()})
            self.history.append(record)
            self.progress.end(e + 1, start_epoch + epochs, record)
        return self.history

    def save_checkpoint(self, path):
        """Write one safetensors file at `path`, atomically: parameters, optimizer state, step
        count, epoch, seed, learning rate and history. `load_checkpoint` resumes from it."""
        m = self.module
        meta = {"step": m.step_count, "epoch": len(self.history), "seed": self.seed,
                "lr": m.lr, "history": self.history, "target_key": m.manifest.get("target_key"),
                "optimizer": m.manifest["optimizer"]["name"]}
        data = checkpoint.encode(m.state_dict(), m.optimizer_state(), meta)
        return checkpoint.write_atomic(path, data)

    def load_checkpoint(self, path):
        """Restore what save_checkpoint wrote into this trainer and its module, after checking
        that every name, shape and dtype fits the module (CheckpointError otherwise); the next
        fit continues as the saved run would have."""
        m = self.module
        params, optim, meta = checkpoint.read(path)
        checkpoint.check_fits(path, "parameter", params, m.manifest["parameters"])
        checkpoint.check_fits(path, "optimizer state tensor", optim,
                              m.manifest["optimizer"]["state"])
        if meta.get("optimizer") != m.manifest["optimizer"]["name"]:
            raise CheckpointError(f"{path}: saved with optimizer {meta.get('optimizer')}, this "
                                  f"module trains with {m.manifest['optimizer']['name']}")
        m.load_state_dict(params)
        m.load_optimizer_state(optim)
        m.step_count, m.lr = int(meta["step"]), float(meta["lr"])
        self.seed, self.history = meta["seed"], list(meta["history"])
        return self

    def evaluate(self, x, y):
        """{'loss', 'accuracy' (classification)} on (x, y), computed from predict()."""
        return _metrics(self.module.manifest.get("loss"), self.module.predict(x), y)
