"""Every knob in one place: each is a keyword argument somewhere and an environment variable here."""

import logging
import os


def dump_ir_dir():
    """Directory where the IR after each pipeline stage is written (TVMFRONT_DUMP_IR), or None."""
    return os.environ.get("TVMFRONT_DUMP_IR") or None


def progress_enabled():
    """Progress bars on unless TVMFRONT_PROGRESS=0."""
    return os.environ.get("TVMFRONT_PROGRESS", "1") != "0"


def derived_gradients():
    """Use derived gradients for every op, explicit ones ignored (TVMFRONT_DERIVED_GRADIENTS=1)."""
    return os.environ.get("TVMFRONT_DERIVED_GRADIENTS", "0") == "1"


def bound_checks():
    """Eager kernels count reads outside their buffers and raise (TVMFRONT_BOUND_CHECKS=1)."""
    return os.environ.get("TVMFRONT_BOUND_CHECKS", "0") == "1"


def flush_denormals():
    """Compiled CPU kernels flush denormal floats to zero (tvmfront.denormals), unless
    TVMFRONT_FLUSH_DENORMALS=0."""
    return os.environ.get("TVMFRONT_FLUSH_DENORMALS", "1") != "0"


def debug_nans():
    """Check every kernel's outputs for NaN/Inf in compiled steps (TVMFRONT_DEBUG_NANS=1)."""
    return os.environ.get("TVMFRONT_DEBUG_NANS", "0") == "1"


# ---- logging ---------------------------------------------------------------------------------
# Whatever falls back (a schedule rule that failed, a library that could not be exported, a
# damaged compile-cache entry) says so through the `tvmfront` logger, with its cause: warning
# level for a failure, debug level for an expected probe ("this rule does not fit here").
# Without any logging configuration Python prints warnings to stderr; silence them with
# logging.getLogger("tvmfront").setLevel(logging.ERROR). Problems in the user's own input
# files (tuning records) are Python warnings instead (records.RecordsWarning): fixable data.
LOG = logging.getLogger("tvmfront")


def logger(part):
    """The logger of one part of tvmfront ("tvmfront.<part>", a child of LOG)."""
    return LOG.getChild(part)
