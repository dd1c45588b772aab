"""Which output axis a GEMM's vectors run along, by the memory traffic of each choice
(tvmfront/schedule/gemm.py, _choose_vector_axis).

A^T B's vectors run along the output axis whose broadcast operand stays small
(tvmfront/schedule/gemm.py, _swept_broadcast_cost): that operand is packed into panels of
the tile's rows and every vector panel sweeps all of it, from L3 once it is bigger than
BROADCAST_PANELS_MAX_BYTES. The Transformer's d/dw [1024, 512]^T @ [1024, 128] -> [512, 128]
vectorizes the 512 axis (its tiles written back transposed) and sweeps the 512 KiB operand,
not the 2 MiB one; the mirror [128, 512] keeps its contiguous vectors, and so does a square
product, whose two choices sweep as much. Nor do vectors run along an axis whose packing copy
would read a page per element (_far_pack_cost). Each computes numpy's product.
"""

import numpy as np
import pytest

from tvmfront import schedule as cpu_schedule
from tvmfront.schedule.params import BROADCAST_PANELS_MAX_BYTES
from tvmfront.target import resolve_target


def _scheduled(m, k, n, target):
    """(rule, check) for C[m, n] = a[k, m]^T dy[k, n] scheduled for `target`; check()
    compiles it and compares with numpy."""
    from tvmfront import ops
    from tvmfront._tvm import te, to_device, tvm

    a, dy = te.placeholder((k, m), name="a"), te.placeholder((k, n), name="dy")
    out = ops.matmul.te_grad(dy, a, te.placeholder((m, n), name="b"))[1]
    target = resolve_target(target)
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func([a, dy, out]), target)

    def check():
        rng = np.random.default_rng(0)
        args = [rng.standard_normal(s).astype("float32") for s in ((k, m), (k, n))]
        result = tvm.runtime.empty((m, n), "float32", tvm.cpu())
        tvm.compile(func, target=target)(*[to_device(x) for x in args], result)
        np.testing.assert_allclose(result.numpy(), args[0].T @ args[1], rtol=1e-4, atol=2e-3)

    return rule, check


@pytest.mark.parametrize("target", ["x86", "x86:avx2"])
def test_the_wider_output_axis_carries_the_vectors_when_the_other_sweep_is_past_l2(target):
    # vectors along n would sweep a (2 MiB); along m they sweep dy (512 KiB)
    assert 1024 * 512 * 4 > BROADCAST_PANELS_MAX_BYTES >= 1024 * 128 * 4
    rule, check = _scheduled(512, 1024, 128, target)
    assert "packed a (panels)+dy (panels of" in rule, rule
    check()


def test_the_mirror_keeps_its_contiguous_vectors():
    rule, check = _scheduled(128, 1024, 512, "x86")
    assert "packed dy (panels)+a (panels of" in rule, rule
    check()


def test_equal_sweeps_keep_the_contiguous_vectors():
    rule, _ = _scheduled(512, 512, 512, "x86")
    assert "packed dy (panels)+a (panels of" in rule, rule


def test_vectors_avoid_an_axis_whose_copy_reads_a_page_per_element():
    """The char Transformer's head, [16, 64, 128] @ [103, 128]^T (103 is prime): along the
    16 sequences its x would be gathered 32 KiB apart, a page per element
    (_far_pack_cost); the vectors run along the 64 positions, 512 B apart."""
    from tvmfront import ops
    from tvmfront._tvm import te, to_device, tvm
    from tvmfront.schedule.params import FAR_PACK_BYTES

    assert 64 * 128 * 4 >= FAR_PACK_BYTES > 128 * 4
    x, w = te.placeholder((16, 64, 128), name="x"), te.placeholder((103, 128), name="w")
    target = resolve_target("x86")
    func, rule = cpu_schedule.schedule_prim_func(
        te.create_prim_func([x, w, ops.dense.te_forward(x, w)]), target)
    assert "xv32" in rule and "packed x (panels)" in rule, rule
    rng = np.random.default_rng(0)
    xa = rng.standard_normal((16, 64, 128)).astype("float32")
    wa = rng.standard_normal((103, 128)).astype("float32")
    result = tvm.runtime.empty((16, 64, 103), "float32", tvm.cpu())
    tvm.compile(func, target=target)(to_device(xa), to_device(wa), result)
    np.testing.assert_allclose(result.numpy(), xa @ wa.T, rtol=1e-4, atol=2e-3)
