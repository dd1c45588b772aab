"""Errors tvmfront raises. Each subclasses the builtin a user would catch anyway."""


class TvmfrontError(Exception):
    """Base of every tvmfront error."""


class ShapeError(TvmfrontError, ValueError):
    """An array's shape or dtype does not match what a compiled module or op expects."""


class GradientError(TvmfrontError, RuntimeError):
    """A gradient is needed where none is defined."""


class TargetError(TvmfrontError, ValueError):
    """An unknown or malformed compilation target."""


class BundleError(TvmfrontError, ValueError):
    """An exported bundle is missing a file, corrupt or tampered with."""


class NonFiniteError(TvmfrontError, FloatingPointError):
    """A NaN or Inf appeared: in the loss (NonFiniteLossError), or, under tvf.debug_nans(), in
    an op's output (NonFiniteOpError)."""


class NonFiniteLossError(NonFiniteError):
    """Trainer.fit's loss became NaN or Inf; `epoch` and `step` say where (both from 1)."""

    def __init__(self, message, epoch, step):
        super().__init__(message)
        self.epoch, self.step = epoch, step


class NonFiniteOpError(NonFiniteError):
    """Under tvf.debug_nans(), the op named by `op` produced NaN or Inf. Raised inside the
    compiled step and rebuilt from its message on the way out of TVM, so `op` is read back
    from the message ("op 'log' ...")."""

    def __init__(self, message):
        super().__init__(message)
        self.op = message.split("'")[1] if message.startswith("op '") else None


class CheckpointError(TvmfrontError, ValueError):
    """A checkpoint file is corrupt, truncated, or does not fit the module it is loaded into."""


class OutOfBoundsError(TvmfrontError, IndexError):
    """Under bound checks (tvf.bound_checks(), TVMFRONT_BOUND_CHECKS=1), a kernel read outside
    a tensor; the message names the stage, the read and the shape."""
