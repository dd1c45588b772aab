"""Elementwise kernels that read each other's outputs are merged into one kernel with several
outputs (tvmfront/merge_elementwise.py), computed in one loop nest (schedule/spatial.py's
_nest_pointwise_outputs): an optimizer's update is one kernel per parameter."""

import numpy as np
from tvm.script import ir as I, relax as R

import tvmfront as tvf
from tvmfront import pipeline
from tvmfront._tvm import relax, relax_call_tir_op, tvm
from tvmfront.build import schedule_lowered
from tvmfront.tuning import policy
from tvmfront.merge_elementwise import merge_elementwise


def _mlp():
    tvf.manual_seed(0)
    return tvf.nn.Sequential(tvf.nn.Linear(16, 32), tvf.nn.ReLU(), tvf.nn.Linear(32, 4))


def _compile(merge):
    stages = list(pipeline.LOWERING)
    if not merge:
        pipeline.LOWERING[:] = [s for s in stages if s[0] != "merge_elementwise"]
    try:
        opt = tvf.optim.AdamW(lr=1e-2, weight_decay=0.1, max_norm=0.5)
        return tvf.compile_training(_mlp(), tvf.nn.CrossEntropyLoss(), opt, inputs=(8, 16),
                                    labels=(8,), records=False)
    finally:
        pipeline.LOWERING[:] = stages


def _calls(mod, function):
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and e.op.same_as(relax_call_tir_op()):
            found.append(e)

    relax.analysis.post_order_visit(mod[function], visit)
    return found


def test_adamw_updates_each_parameter_in_one_kernel_and_trains_as_before():
    merged, apart = _compile(True), _compile(False)
    step = [g.name_hint for g in merged._lowered.get_global_vars() if "train_step" in g.name_hint]
    calls = _calls(merged._lowered, step[0])
    updates = [c for c in calls if isinstance(c.ty_args[0], relax.TupleType)]
    # one kernel per parameter (two Linear layers: 4), writing its moments and the parameter
    assert len(updates) == 4 and all(len(c.ty_args[0].fields) == 3 for c in updates)
    assert len(calls) < len(_calls(apart._lowered, step[0])) - 8
    target = merged._target
    scheduled, _ = schedule_lowered(merged._lowered, target, policy.select(False, target))
    rules = {c.args[0].name_hint: str(scheduled[c.args[0]].attrs["tvmfront.schedule_rule"])
             for c in updates}
    assert all("=nested" in r for r in rules.values()), rules  # one loop nest each
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((8, 16)).astype("float32")
        y = rng.integers(0, 4, 8)
        np.testing.assert_allclose(merged.step(x, y), apart.step(x, y), rtol=1e-6)
    for name, value in apart.state_dict().items():
        np.testing.assert_allclose(merged.state_dict()[name], value, rtol=1e-5, atol=1e-7)


@I.ir_module
class ReadBetween:
    @R.function
    def main(x: R.Tensor((64,), "float32")):
        with R.dataflow():
            a = R.exp(x)
            s = R.sum(a)  # reads `a` before `b`, which reads both: merging a and b would
            b = R.add(a, s)  # have to move this reduction
            c = R.multiply(b, b)
            R.output(a, c)
        return (a, c)


def test_a_group_read_in_between_by_another_kernel_is_left_alone_and_correct():
    mod = relax.transform.LegalizeOps()(ReadBetween)
    mod = relax.transform.AnnotateTIROpPattern()(mod)
    mod = relax.transform.FuseTIR()(relax.transform.FuseOps()(mod))
    before = len(_calls(mod, "main"))
    merged = merge_elementwise(mod)
    assert len(_calls(merged, "main")) == before  # exp stays apart: sum reads it first
    x = np.linspace(-1, 1, 64).astype("float32")
    vm = relax.VirtualMachine(tvm.compile(merged, target="llvm"), tvm.cpu())
    a, c = vm["main"](tvm.runtime.tensor(x))
    np.testing.assert_allclose(a.numpy(), np.exp(x), rtol=1e-6)
    np.testing.assert_allclose(c.numpy(), (np.exp(x) + np.exp(x).sum()) ** 2, rtol=1e-5)


def test_a_causal_lm_keeps_its_reshape_views_and_its_concatenation_copies():
    """The attention's d(qkv) concatenation (strided_slice gradients summed: a branch per
    element) keeps _schedule_ranges' copies, not merged into the loop of the bias-add d/dx
    beside it, and that d/dx (a reshape) is no output of a merged kernel: it stays a view."""
    tvf.manual_seed(0)
    model = tvf.nn.CausalLM(vocab_size=11, context=8, d_model=16, nhead=2, num_layers=1,
                            dim_feedforward=32)
    module = tvf.compile_training(model, tvf.nn.CrossEntropyLoss(),
                                  tvf.optim.AdamW(lr=1e-3, max_norm=1.0),
                                  inputs=tvf.TensorSpec((4, 8), "int64"),
                                  labels=tvf.TensorSpec((4, 8), "int64"), records=False)
    target = module._target
    scheduled, _ = schedule_lowered(module._lowered, target, policy.select(False, target))
    rules = {g.name_hint: str(f.attrs["tvmfront.schedule_rule"])
             for g, f in scheduled.functions.items()
             if f.attrs is not None and "tvmfront.schedule_rule" in f.attrs}
    concat = [r for n, r in rules.items() if "strided_slice_grad" in n]
    assert concat and all("ranges" in r and "nested" not in r for r in concat), concat
    merged = [c for c in _calls(module._lowered, "loss_adjoint")
              if isinstance(c.ty_args[0], relax.TupleType)]
    assert not any("strided_slice_grad" in c.args[0].name_hint for c in merged)
    assert any("nested" in r for r in rules.values())  # AdamW's updates still are


def _two_outputs(shifted):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((64,), "float32"), a: T.Buffer((64,), "float32"),
             b: T.Buffer((64,), "float32")):
        for i in range(64):
            with T.sblock("a"):
                vi = T.axis.spatial(64, i)
                a[vi] = x[vi] * T.float32(2)
        for i in range(64):
            with T.sblock("b"):
                vi = T.axis.spatial(64, i)
                if shifted:  # one element ahead: merged, b would read a before it is written
                    b[vi] = a[(vi + 1) % 64] + T.float32(1)
                else:
                    b[vi] = a[vi] + T.float32(1)

    return func


def test_the_loop_merge_takes_blocks_that_read_each_other_in_place_only():
    from tvmfront._tvm import s_tir
    from tvmfront.schedule import spatial

    assert spatial._nest_pointwise_outputs(s_tir.Schedule(_two_outputs(False))) == ["a"]
    assert spatial._nest_pointwise_outputs(s_tir.Schedule(_two_outputs(True))) == []


@tvf.op
def _reversed_times_next(x):
    """y[i] = x[8 - 2i] * x[i + 1]: its derived gradient's kernel holds an intermediate
    pointwise block (the loss's d/dpred) beside pointwise outputs of the same extent."""
    te = tvf.te
    return te.compute((4,), lambda i: x[8 - 2 * i] * x[i + 1], name="reversed_times_next")


class _ScaledOp(tvf.nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = tvf.nn.Parameter(p)

    def forward(self, x):
        return _reversed_times_next(self.p) * x


def test_an_intermediate_is_not_nested_into_a_vectorized_loop():
    """TVM 0.27 miscompiles a vectorized loop in which one block writes an intermediate
    buffer and the next reads it (every lane read the last lane's value): the compiled
    gradient was wrong where eager vjp and numpy agreed."""
    rng = np.random.default_rng(0)
    p, x, y = rng.standard_normal(9), rng.standard_normal(4), rng.standard_normal(4)
    module = tvf.compile_training(_ScaledOp(p.copy()), tvf.nn.MSELoss(), tvf.optim.SGD(0.1),
                                  inputs=tvf.TensorSpec((4,), "float64"),
                                  labels=tvf.TensorSpec((4,), "float64"))
    _, grads = module.loss_and_grads(x, y)
    dy = 2 * (p[8::-2][:4] * p[1:5] * x - y) / 4 * x
    want = np.zeros(9)
    for i in range(4):
        want[8 - 2 * i] += p[i + 1] * dy[i]
        want[i + 1] += p[8 - 2 * i] * dy[i]
    np.testing.assert_allclose(_reversed_times_next.vjp(dy, p)[0], want, rtol=1e-12)
    np.testing.assert_allclose(grads["p"], want, rtol=1e-12)
