"""The lowering pipeline is data; its order and what each stage produces are checked."""

import os

import numpy as np

import tvmfront as tvf
from tvmfront import pipeline

nn = tvf.nn


def test_lowering_order():
    names = [name for name, _ in pipeline.LOWERING]
    assert names[0] == "lower_grad_calls"  # before anything that cannot see call_tir_with_grad
    assert names.index("legalize") < names.index("fuse_ops") < names.index("fuse_tir")
    # Kernels with several outputs are marked opaque after patterns are annotated, before fusion.
    assert (names.index("annotate_patterns") < names.index("unfused_multi_output")
            < names.index("fuse_ops"))
    # Gradient tuples are read through before fusion; the outputs FuseOps emitted last are
    # moved back beside their inputs after it.
    assert (names.index("untuple_gradients") < names.index("fuse_ops")
            < names.index("fuse_tir") < names.index("outputs_early"))


@tvf.op
def _twice_and_plus_one(x):
    te = tvf.te
    return [te.compute(x.shape, lambda *i: x(*i) * 2, name="twice"),
            te.compute(x.shape, lambda *i: x(*i) + 1, name="plus_one")]


class _TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        a, b = _twice_and_plus_one(self.lin(x))
        return a * b


def test_op_with_several_outputs_runs_in_compiled_inference():
    # Fused with the Linear before it, TVM's FuseTIR read an intermediate before defining it.
    tvf.manual_seed(0)
    model = _TwoOutputs()
    infer = tvf.compile_inference(model, inputs=(3, 4))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype("float32")
    p = model.state_dict()
    y = x @ p["lin.weight"].T + p["lin.bias"]
    np.testing.assert_allclose(infer(x), 2 * y * (y + 1), rtol=1e-5, atol=1e-6)


def test_debug_nans_lowering_order():
    names = [name for name, _ in pipeline.lowering(debug_nans=True)]
    assert pipeline.lowering(debug_nans=False) is pipeline.LOWERING
    # One op per kernel (no fusion), every kernel legalized before it is checked, and the
    # checks in place before dead-code elimination, which keeps them (they are impure).
    assert "fuse_ops" not in names and "fuse_tir" not in names
    assert names.index("legalize") < names.index("check_finite") < names.index("dead_code")


def test_dump_ir_after_every_stage(tmp_path):
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    dump = tmp_path / "ir"
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=(2, 4), labels=(2,), dump_ir=str(dump))
    graph_stages = sorted(os.listdir(dump / "."))
    assert graph_stages[:3] == ["00_input.py", "01_gradient.py", "02_append_optimizer.py"]
    lowering = sorted(os.listdir(dump / "lowering"))
    expected = ["00_input"] + [f"{i:02d}_{n}" for i, (n, _) in
                               enumerate(pipeline.LOWERING + [("schedule", None)], 1)]
    assert lowering == [e + ".py" for e in expected]

    text = {f: (dump / f).read_text() for f in graph_stages if f.endswith(".py")}
    assert "def loss_adjoint" not in text["00_input.py"]
    assert "def loss_adjoint" in text["01_gradient.py"]
    assert "def train_step" in text["02_append_optimizer.py"]
    before = (dump / "lowering" / "00_input.py").read_text()
    after = (dump / "lowering" / "01_lower_grad_calls.py").read_text()
    assert "call_tir_with_grad" in before and "call_tir_with_grad" not in after
    fused = (dump / "lowering" / f"{len(pipeline.LOWERING):02d}_dead_code.py").read_text()
    assert "fused_" in fused  # the optimizer update's pointwise chain was fused
    # the dumped pipeline still compiles to a working step
    x, y = np.ones((2, 4), "float32"), np.array([0, 1])
    assert np.isfinite(module.step(x, y))


def test_lr_and_step_are_inputs_not_constants(tmp_path):
    tvf.manual_seed(0)
    dump = tmp_path / "ir"
    tvf.compile_training(nn.Sequential(nn.Linear(3, 2)), nn.CrossEntropyLoss(),
                         tvf.optim.Adam(0.0123), inputs=(2, 3), labels=(2,), dump_ir=str(dump))
    step_ir = (dump / "02_append_optimizer.py").read_text()
    assert "def train_step(x" in step_ir and "lr: R.Tensor((), dtype=\"float32\")" in step_ir
    assert "step: R.Tensor((), dtype=\"float32\")" in step_ir
    assert "0.0123" not in step_ir  # the default lr is never baked into the graph
