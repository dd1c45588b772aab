"""Every knob in one place: each is a keyword argument somewhere and an environment variable here."""

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
