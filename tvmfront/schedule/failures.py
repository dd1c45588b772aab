"""How a rule says it does not fit, and how failed rules are logged and counted.

Fallbacks are logged (``tvmfront.schedule`` logger) with the kernel, the rule and the cause.
A rule whose pattern does not fit a block says so by raising ``NotApplicable``: that is a
probe's answer, logged at debug level. Any other exception from a rule (a schedule primitive
refusing, a bug) is a failure: logged at warning level and counted, per kernel, in
``default_cpu_schedule``'s `fallbacks` (the build info's ``fallback_kernels``).
"""

import contextvars
import logging

from ..config import logger

log = logger("schedule")


class NotApplicable(ValueError):
    """A rule's pattern does not fit this block: the answer of a probe, not a failure."""


class _Kernel:
    """The kernel being scheduled: its name and the rules that failed on it."""

    def __init__(self, name):
        self.name = name
        self.failures = {}  # rule -> cause, first failure of each rule


_current = contextvars.ContextVar("tvmfront_schedule_kernel", default=None)


def _failed(rule, err):
    """A rule raised `err`: NotApplicable is a probe's answer (debug); anything else is a rule
    meant to apply that failed, so the kernel falls back to a simpler schedule (warning)."""
    kernel = _current.get() or _Kernel("?")
    if isinstance(err, NotApplicable):
        log.debug("kernel %s: rule %s does not apply (%s)", kernel.name, rule, err)
    elif rule not in kernel.failures:  # tiled_only and the full rule retry the same blocks
        kernel.failures[rule] = cause = f"{type(err).__name__}: {_first_lines(err)}"
        log.warning("kernel %s: schedule rule %s failed, falling back to a simpler schedule "
                    "(%s)", kernel.name, rule, cause)


def _probe(rule, err):
    """A schedule primitive used as its own applicability check refused (debug level)."""
    if log.isEnabledFor(logging.DEBUG):  # TVM's messages hold the IR: only when asked for
        kernel = _current.get() or _Kernel("?")
        log.debug("kernel %s: %s does not apply (%s: %s)", kernel.name, rule,
                  type(err).__name__, _first_lines(err))


def _first_lines(err, limit=300):
    """An exception's message without the IR that TVM prints with it: the lines after its
    last "Error message:", else the first line."""
    text = str(err).strip()
    head, marker, tail = text.rpartition("Error message:")
    lines = [ln.strip() for ln in (tail if marker else text).splitlines() if ln.strip()]
    text = " ".join(lines[:3] if marker else lines[:1]) or "(no message)"
    return text if len(text) <= limit else text[:limit] + "..."
