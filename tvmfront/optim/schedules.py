"""Learning-rate schedules: pure functions of the step, fed by Trainer as the runtime lr.

A schedule maps ``step`` (optimizer steps already taken: 0 for the first step) to the
learning rate of that step. They compose: ``warmup(100, cosine(1e-3, 900))`` ramps up for 100
steps, then runs the cosine from its own step 0. ``Trainer(module, lr_schedule=s)`` calls
``s(module.step_count)`` before every step, so a resumed run continues where it stopped.

    >>> s = schedules.warmup(2, schedules.cosine(1.0, 4))
    >>> [round(s(t), 3) for t in range(7)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
"""

import math
import numbers

from .._checks import is_whole


class Schedule:
    """A per-step schedule: ``schedule(step) -> lr``, described by its repr (kept in
    checkpoints)."""

    def __init__(self, fn, description):
        self._fn, self._description = fn, description

    def __call__(self, step):
        return self._fn(int(step))

    def __repr__(self):
        return self._description


def _positive_int(name, value, what):
    if not is_whole(value, least=1):
        raise ValueError(f"{name}: {what} must be a positive integer, got {value!r}")
    return int(value)


def _as_schedule(value):
    return value if isinstance(value, Schedule) else constant(value)


def _number(name, value):
    """TypeError unless `value` is an lr: a real number (a function here had failed only at
    the first step, inside the schedule, with a bare TypeError)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = " (a function of the step: schedules.per_step(fn))" if callable(value) else ""
        raise TypeError(f"{name}: expected a number or a schedule, got {value!r}{hint}")


def per_step(fn):
    """Any function of the step (0-based) as a schedule the Trainer calls every step."""
    return Schedule(fn, f"per_step({getattr(fn, '__name__', fn)!s})")


def constant(lr):
    _number("constant", lr)
    return Schedule(lambda t: lr, f"constant({lr})")


def linear(start, end, steps):
    """From `start` at step 0 to `end` at step `steps`, `end` after."""
    _positive_int("linear", steps, "steps")
    return Schedule(lambda t: start + (end - start) * min(t, steps) / steps,
                    f"linear({start}, {end}, {steps})")


def cosine(lr, steps, final=0.0):
    """Cosine annealing from `lr` at step 0 to `final` at step `steps`, `final` after
    (torch's CosineAnnealingLR with T_max=steps, eta_min=final)."""
    _positive_int("cosine", steps, "steps")
    return Schedule(lambda t: final + (lr - final) * (1 + math.cos(math.pi * min(t, steps)
                                                                    / steps)) / 2,
                    f"cosine({lr}, {steps}, final={final})")


def step(lr, every, gamma=0.1):
    """lr * gamma ** (step // every): torch's StepLR with step_size=every."""
    _positive_int("step", every, "every")
    return Schedule(lambda t: lr * gamma ** (t // every), f"step({lr}, every={every}, "
                                                           f"gamma={gamma})")


def warmup(steps, then, start_factor=None):
    """Linear warmup for `steps` steps to `then`'s first value, then `then` (a schedule or a
    number) from its own step 0. The factor runs from `start_factor` (default 1 / steps) at
    step 0 up to 1 at step `steps - 1`, so no step is wasted at lr 0."""
    _positive_int("warmup", steps, "steps")
    then = _as_schedule(then)
    first = 1.0 / steps if start_factor is None else float(start_factor)

    def lr(t):
        if t >= steps:
            return then(t - steps)
        return then(0) * (first + (1 - first) * (t / (steps - 1) if steps > 1 else 1.0))

    return Schedule(lr, f"warmup({steps}, {then!r}, start_factor={first})")
