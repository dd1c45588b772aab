"""A GEMM whose packed vector operand fits in L2 and whose other operand is bigger runs its
row tiles outermost, each sweeping every panel (gemm._rows_outer): the big operand is read
once, and each core writes whole output rows. Others keep their panels outermost."""

import numpy as np
import pytest

from tvmfront import ops
from tvmfront import schedule as cpu_schedule
from tvmfront._tvm import te, to_device, tvm
from tvmfront.target import resolve_target


def _scheduled(inputs, out):
    return cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]),
                                           resolve_target("x86"))


@pytest.mark.parametrize("m,k,n", [(1024, 128, 384), (1024, 512, 128), (1000, 128, 512)])
def test_dense_with_a_small_weight_runs_rows_outer_and_stays_exact(m, k, n):
    # the Transformer's qkv, ff2 and ff1 (a row count no tile divides) at batch 16 x 64
    x, w = te.placeholder((m, k), name="x"), te.placeholder((n, k), name="w")
    func, rule = _scheduled([x, w], ops.dense.te_forward(x, w))
    assert "packed w (panels), rows outer" in rule, rule
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype("float32"), rng.standard_normal((n, k)).astype("float32")
    lib = tvm.compile(func, target=resolve_target("x86"))
    result = tvm.runtime.empty((m, n), "float32", tvm.cpu())
    lib(to_device(a), to_device(b), result)
    np.testing.assert_allclose(result.numpy(), a @ b.T, rtol=1e-4, atol=1e-3)


def test_dense_d_dx_with_a_small_weight_runs_rows_outer():
    x, w = te.placeholder((1024, 128), name="x"), te.placeholder((512, 128), name="w")
    dy = te.placeholder((1024, 512), name="dy")
    func, rule = _scheduled([dy, w], ops.dense.te_grad(dy, x, w)[0])
    assert "(panels), rows outer" in rule, rule


@pytest.mark.parametrize("m,k,n", [(1024, 1024, 1024), (256, 128, 1024)])
def test_panels_stay_outermost_past_l2_or_over_a_smaller_operand(m, k, n):
    # a 4 MiB weight does not stay in L2; a 512 KiB weight over 256 rows is the bigger
    # operand: each panel is then read once while the rows sweep it
    x, w = te.placeholder((m, k), name="x"), te.placeholder((n, k), name="w")
    _, rule = _scheduled([x, w], ops.dense.te_forward(x, w))
    assert "panels" in rule and "rows outer" not in rule, rule


def test_weight_gradient_keeps_its_panels_outermost():
    # d/dw (A^T B) packs its broadcast operand into panels of its tile too: rows outer lost
    # there (0.76x the Transformer's train step)
    x, w = te.placeholder((1024, 128), name="x"), te.placeholder((512, 128), name="w")
    dy = te.placeholder((1024, 512), name="dy")
    _, rule = _scheduled([dy, x, w], ops.dense.te_grad(dy, x, w)[1])
    assert "panels of" in rule and "rows outer" not in rule, rule


def test_inference_on_prepacked_weights_runs_rows_outer_over_many_rows():
    # predict_packed's dense reads weights packed once into panels: at 1024 rows of 128
    # features a [512, 128] weight (256 KiB) is the smaller operand; at 8 rows it is not
    import tvmfront as tvf
    from tvmfront.build import schedule_lowered
    from tvmfront.tuning import policy

    notes = {}
    for rows in (1024, 8):
        tvf.manual_seed(0)
        model = tvf.nn.Sequential(tvf.nn.Linear(128, 512), tvf.nn.ReLU(), tvf.nn.Linear(512, 10))
        module = tvf.compile_inference(model, inputs=(rows, 128), records=False)
        target = module._target
        scheduled, _ = schedule_lowered(module._lowered, target, policy.select(False, target))
        notes[rows] = [str(f.attrs["tvmfront.schedule_rule"]) for gv, f in
                       scheduled.functions.items() if gv.name_hint.startswith("fused_dense_packed")]
        x = np.random.default_rng(rows).standard_normal((rows, 128)).astype("float32")
        state = module.state_dict()
        w1, b1, w2, b2 = (state[k] for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
        want = np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
        np.testing.assert_allclose(module(x), want, rtol=1e-4, atol=1e-4)
    assert any("rows outer" in n for n in notes[1024]), notes
    assert not any("rows outer" in n for n in notes[8]), notes
