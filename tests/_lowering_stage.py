"""Shared by the tests of one lowering stage: compile with and without it, and check that a
few training steps give the same numbers either way."""

import numpy as np

from tvmfront import pipeline

# The stages as shipped: a test that compiles without a stage and then with it must start
# from these, not from the list its first compile patched in.
_SHIPPED = tuple(pipeline.LOWERING)


def without_stage(monkeypatch, stage, with_stage):
    """Run the next compiles (uncached) with the shipped pipeline.LOWERING, less `stage`
    unless `with_stage`."""
    monkeypatch.setenv("TVMFRONT_CACHE", "0")
    assert stage in [s[0] for s in _SHIPPED], stage
    stages = [s for s in _SHIPPED if with_stage or s[0] != stage]
    monkeypatch.setattr(pipeline, "LOWERING", stages)


def assert_same_steps(compile_step, x, y, steps=4, rtol=1e-6, state_rtol=1e-5):
    """compile_step(with_stage) -> a training module; both modules take `steps` steps on
    (x, y): their losses and final states agree."""
    runs = []
    for with_stage in (False, True):
        module = compile_step(with_stage)
        runs.append(([module.step(x, y) for _ in range(steps)], module.state_dict()))
    (losses_a, state_a), (losses_b, state_b) = runs
    np.testing.assert_allclose(losses_a, losses_b, rtol=rtol)
    for name in state_a:
        np.testing.assert_allclose(state_a[name], state_b[name], rtol=state_rtol, atol=1e-7,
                                   err_msg=name)
