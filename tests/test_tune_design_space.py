"""A kernel whose MetaSchedule design space cannot be generated is left to its default schedule
and the others are tuned. MetaSchedule raises a schedule rule's ScheduleError out of its whole
tuning loop: `tvmfront tune examples/char_transformer.py` ended with nothing tuned on the
LayerNorm backward kernel's reverse_compute_at error."""

import logging

from tvmfront.tuning import search
from tvmfront.tuning.tasks import Kernel


class _Context:
    def __init__(self, fails):
        self.fails = fails

    def generate_design_space(self):
        if self.fails:
            raise RuntimeError("ScheduleError: An error occurred in the schedule primitive "
                               "'reverse-compute-at'.\nthe producers are not under the loop")
        return ["a design space"]


def test_kernels_without_a_design_space_are_dropped_from_the_run(caplog):
    kernels = [Kernel(name, [name], str(i), 1, 0) for i, name in enumerate("abc")]
    run = search.Run(list(kernels), budget=16, seconds=None, per_batch=16, progress=False)
    contexts = [_Context(False), _Context(True), _Context(False)]
    with caplog.at_level(logging.WARNING, logger="tvmfront.tune"):
        kept = search._tunable(contexts, run)
    assert kept == [contexts[0], contexts[2]]
    assert [k.name for k in run.kernels] == ["a", "c"]  # task ids follow the kept contexts
    assert len(run.best) == len(run.history) == 2
    assert "kernel b is not tuned" in caplog.text and "the producers" in caplog.text


def test_every_kernel_with_a_design_space_is_kept():
    kernels = [Kernel(name, [name], str(i), 1, 0) for i, name in enumerate("ab")]
    run = search.Run(kernels, budget=16, seconds=None, per_batch=16, progress=False)
    contexts = [_Context(False), _Context(False)]
    assert search._tunable(contexts, run) == contexts
    assert run.kernels is kernels
