"""No default schedule writes one place from every iteration of a parallel loop.

dlight's Reduction rule put the cross-entropy gradient's 0-d sample count inside its parallel
loop over rows: every thread initialized and accumulated the same scalar (a data race, benign
only while LLVM keeps the sum in a register) and the 1024-label count ran 1024 times (4 ms of a
0.5 ms kernel). Such a schedule is refused and the next rule schedules the kernel."""

import numpy as np

import tvmfront  # noqa: F401  (the lazy TVM adapter)
from tvmfront import ops
from tvmfront._tvm import te, tvm
from tvmfront.schedule import analysis, dispatch, schedule_prim_func
from tvmfront.target import resolve_target

TARGET = {"kind": "llvm", "num-cores": 2}


def _ce_grad_func(rows=1024, classes=103):
    logits = te.placeholder((rows, classes), "float32", name="logits")
    labels = te.placeholder((rows,), "int64", name="labels")
    dy = te.placeholder((), "float32", name="dy")
    g, _ = ops.cross_entropy.te_grad(dy, logits, labels)
    return te.create_prim_func([dy, logits, labels, g])


def test_the_check_sees_a_count_written_from_every_parallel_row():
    func = _ce_grad_func()
    dlight = dispatch.dlight.cpu.Reduction().apply(func, resolve_target(TARGET), False)
    racy = dlight.mod["main"]
    assert "valid_count" in analysis.parallel_write_races(racy)
    assert analysis.parallel_write_races(func) == []  # unscheduled: no parallel loop


def test_default_schedules_of_loss_and_norm_gradients_have_no_races():
    target = resolve_target(TARGET)
    x = te.placeholder((64, 32, 48), "float32", name="x")
    gamma = te.placeholder((48,), "float32", name="gamma")
    beta = te.placeholder((48,), "float32", name="beta")
    dy = te.placeholder((64, 32, 48), "float32", name="dy")
    funcs = {"cross_entropy": _ce_grad_func()}
    for name, fn, inputs in [("layer_norm", ops.layer_norm, (x, gamma, beta)),
                             ("log_softmax", ops.log_softmax, (x,)),
                             ("softmax", ops.softmax, (x,))]:
        grads = fn.te_grad(dy, *inputs, derived=False)
        funcs[name] = te.create_prim_func([dy, *inputs, *grads])
    for name, func in funcs.items():
        scheduled, rule = schedule_prim_func(func, target)
        assert analysis.parallel_write_races(scheduled) == [], (name, rule)
        if name == "cross_entropy":  # the rule after the refused one still runs rows in parallel
            assert "parallel" in analysis.loop_kinds(scheduled), rule
            assert not rule.startswith("dlight"), rule


def test_cross_entropy_gradient_is_right_under_its_schedule():
    func = _ce_grad_func(256, 103)
    scheduled, rule = schedule_prim_func(func, resolve_target(TARGET))
    lib = tvm.compile(tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}),
                      target="llvm")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((256, 103)).astype(np.float32)
    labels = rng.integers(0, 103, 256).astype(np.int64)
    labels[::5] = -100  # ignored
    out = tvm.runtime.empty((256, 103), "float32", tvm.cpu())
    lib["main"](tvm.runtime.tensor(np.ones((), np.float32)), tvm.runtime.tensor(logits),
                tvm.runtime.tensor(labels), out)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    keep = labels != -100
    p[np.flatnonzero(keep), labels[keep]] -= 1
    want = p * keep[:, None] / keep.sum()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-8)
