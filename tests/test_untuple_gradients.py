"""pipeline.untuple_gradients and pipeline.outputs_early on a train step.

untuple_gradients: Relax's Gradient reads an op's input gradients out of a tuple, a second
consumer that kept FuseOps from fusing any gradient kernel; without it a dense d/dx fuses with
the gelu_grad after it (scheduled as the two kernels apart in one: see
test_schedule_streamed_epilogue.py). outputs_early: with the tuples gone, FuseOps emitted
every parameter gradient (bias and weight gradients, the step's outputs) at the end of the
step, far from the kernels that computed their inputs; the stage binds each right after the
last binding it reads. Neither changes the numbers.
"""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront._tvm import relax

from _lowering_stage import assert_same_steps, without_stage

nn, ops = tvf.nn, tvf.ops


class _GeluMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 32)
        self.down = nn.Linear(32, 4)

    def forward(self, x):
        return self.down(ops.gelu(self.up(x)))


def _compile(monkeypatch, stage, with_stage, batch=16):
    without_stage(monkeypatch, stage, with_stage)
    tvf.manual_seed(0)
    return tvf.compile_training(_GeluMlp(), nn.CrossEntropyLoss(), tvf.optim.Adam(0.01),
                                inputs=(batch, 8), labels=(batch,), records=False)


def _bindings(module, function="loss_adjoint"):
    (block,) = [b for b in module._lowered[function].body.blocks
                if isinstance(b, relax.DataflowBlock)]
    return list(block.bindings)


def _kernels(module):
    return {b.value.args[0].name_hint for b in _bindings(module)
            if isinstance(b.value, relax.Call) and isinstance(b.value.args[0], relax.GlobalVar)}


def _late_outputs(module):
    """Names of the output bindings with a dataflow binding between them and the last
    binding they read."""
    bindings = _bindings(module)
    late = []
    for i, binding in enumerate(bindings):
        if isinstance(binding.var, relax.DataflowVar):
            continue
        reads = set(relax.analysis.free_vars(binding.value))
        last = max((j for j in range(i) if bindings[j].var in reads), default=-1)
        if any(isinstance(b.var, relax.DataflowVar) for b in bindings[last + 1:i]):
            late.append(str(binding.var))
    return late


def test_a_dense_gradient_fuses_with_gelu_grad(monkeypatch):
    fused = [k for k in _kernels(_compile(monkeypatch, "untuple_gradients", True))
             if "dense_grad" in k and "gelu_grad" in k]
    assert fused
    assert not [k for k in _kernels(_compile(monkeypatch, "untuple_gradients", False))
                if "gelu_grad" in k and "dense" in k]


def test_parameter_gradients_follow_their_inputs(monkeypatch):
    assert _late_outputs(_compile(monkeypatch, "outputs_early", False))  # what the stage mends
    assert not _late_outputs(_compile(monkeypatch, "outputs_early", True))


@pytest.mark.parametrize("stage", ["untuple_gradients", "outputs_early"])
@pytest.mark.parametrize("batch", [16, "n"])
def test_the_steps_numbers_do_not_change(monkeypatch, stage, batch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8)).astype("float32")
    y = rng.integers(0, 4, 16)
    assert_same_steps(lambda with_stage: _compile(monkeypatch, stage, with_stage, batch), x, y)
