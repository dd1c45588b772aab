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
