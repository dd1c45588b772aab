"""A GEMM whose output is past REDUCTION_BLOCK_MAX_OUTPUT_BYTES (1024^3: 4 MiB) and whose vector
panel is past L1 is blocked as GotoBLAS blocks it, on AVX-512 (tvmfront/schedule/gemm.py,
_row_blocks):

- the cores take blocks of output rows, each at most OUTPUT_BLOCK_L2_SHARE of L2, in a buffer of
  their own laid out tile after tile ([rows // 8, columns // 32, 8, 32]: the output's rows,
  4 KiB apart, would share L1 sets with the panel), copied out after the block;
- inside a block, the blocks of the reduction (KC), then the panels, then the row tiles;
- a weight already in panels (inference, tvmfront.prepack) is blocked the same way;
- AVX2 (a 4 x v16 tile, half the FMAs between reloads of its output tile) and AArch64 keep the
  whole reduction.

1024^3 on the 2-core AVX-512 Xeon, 2 threads: 1.04-1.06x (bench/peers.py --only ops, GEMM 1024
interleaved with numpy: 0.93-0.95x numpy, 0.86-0.87x before). Every form computes numpy's
product, scheduled for AVX-512 and run on this host.
"""

import numpy as np
import pytest

from tvmfront import schedule as cpu_schedule
from tvmfront.schedule.params import (L1_PANEL_SHARE, OUTPUT_BLOCK_L2_SHARE, CpuParams)
from tvmfront.target import resolve_target

from test_schedule_gemm_blocks import _gemm

PARALLEL, VECTORIZED = 1, 2  # tirx.ForKind


def _schedule(inputs, out, target):
    from tvmfront._tvm import s_tir, te

    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
    return func, rule, s_tir.Schedule(func)


def _update_block(sch, name):
    block = sch.get_sblock(f"{name}_update")
    loops = [(int(sch.get(lp).extent), int(sch.get(lp).kind)) for lp in sch.get_loops(block)]
    return loops, sch.get(block).writes[0].source


def _run(func, inputs, out, ref):
    from tvmfront._tvm import to_device, tvm

    rng = np.random.default_rng(0)
    args = [rng.standard_normal([int(d) for d in t.shape]).astype("float32") for t in inputs]
    result = tvm.runtime.empty([int(d) for d in out.shape], "float32", tvm.cpu())
    tvm.compile(func, target=resolve_target("x86"))(*[to_device(a) for a in args], result)
    return result.numpy(), ref(*args)


@pytest.mark.parametrize("form", ["A B", "A B^T", "A^T B"])
def test_a_big_output_is_blocked_by_rows_then_reduction_then_panels(form):
    target = resolve_target("x86:avx512")
    params = CpuParams(target)
    inputs, out, _ = _gemm(form, 1024, 1024, 1024)
    _, rule, sch = _schedule(inputs, out, target)
    assert "row blocks of" in rule and "k-blocks of" in rule, rule
    loops, acc = _update_block(sch, "c")
    (blocks, kind), (k_blocks, _), (panels, _), (row_tiles, _), (kc, _) = loops[:5]
    tile, vec = loops[5][0], loops[6][0]
    rows = 1024 // blocks
    assert kind == PARALLEL and blocks >= params.cores, loops
    assert rows * 1024 * 4 <= params.l2_bytes * OUTPUT_BLOCK_L2_SHARE, (rows, params.l2_bytes)
    assert k_blocks * kc == 1024 and kc * vec * 4 <= params.l1d_bytes * L1_PANEL_SHARE, loops
    assert panels * vec == 1024 and row_tiles * tile == rows and loops[6][1] == VECTORIZED, loops
    # the block's accumulator: tile after tile, not the output's rows
    assert acc.name != "c" and [int(d) for d in acc.shape][-2:] == [tile, vec], acc


@pytest.mark.parametrize("form", ["A B", "A B^T", "A^T B"])
def test_row_blocks_compute_the_product(form):
    # 512 x 1024 outputs (2 MiB) over 512 steps: 4 row blocks of 128 KiB on AVX-512's
    # default L2 (512 KiB)
    m, k, n = (1024, 512, 512) if form == "A^T B" else (512, 512, 1024)
    inputs, out, ref = _gemm(form, m, k, n)
    func, rule, _ = _schedule(inputs, out, resolve_target("x86:avx512"))
    assert "row blocks of" in rule, rule
    got, want = _run(func, inputs, out, ref)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3, err_msg=rule)


def test_a_weight_already_in_panels_is_blocked_too():
    """tvmfront.prepack's dense over a weight packed once into panels [n // 32, k, 32]."""
    from tvmfront._tvm import s_tir, to_device, tvm
    from tvmfront.prepack import _DENSE, _prim_func

    m, k, n = 1024, 512, 1024
    dense = _prim_func(_DENSE, m=m, k=k, n=n, no=n // 32, p=32)
    func, rule = cpu_schedule.schedule_prim_func(dense, resolve_target("x86:avx512"))
    assert "row blocks of" in rule and "k-blocks of" in rule, rule
    loops, _ = _update_block(s_tir.Schedule(func), "dense")
    assert loops[0][1] == PARALLEL, loops
    rng = np.random.default_rng(0)
    x, w = (rng.standard_normal(s).astype("float32") for s in ((m, k), (n, k)))
    panels = np.ascontiguousarray(w.reshape(n // 32, 32, k).transpose(0, 2, 1))
    got = tvm.runtime.empty((m, n), "float32", tvm.cpu())
    tvm.compile(func.with_attr("global_symbol", "dense"), target=resolve_target("x86"))(
        to_device(x), to_device(panels), got)
    np.testing.assert_allclose(got.numpy(), x @ w.T, rtol=1e-4, atol=2e-3, err_msg=rule)


@pytest.mark.parametrize("target", ["x86:avx2", "aarch64"])
def test_narrower_vectors_keep_the_whole_reduction(target):
    inputs, out, _ = _gemm("A B", 1024, 1024, 1024)
    _, rule, sch = _schedule(inputs, out, resolve_target(target))
    assert "row blocks" not in rule and "k-blocks" not in rule, rule
    loops, acc = _update_block(sch, "c")
    assert 1024 in [e for e, _ in loops] and acc.name == "c", (loops, acc)
