"""A GEMM whose vector panel (reduction x vector length) does not fit in L1 runs its reduction
in blocks (tvmfront/schedule/gemm.py, _reduction_block), as BLAS does with its KC, where its
output stays in L2 between blocks (REDUCTION_BLOCK_MAX_OUTPUT_BYTES):

- one parallel iteration per core outside, then the loop over blocks of the reduction, then
  that core's panels and the row tiles; each tile adds its block's sum to the output (the
  first block sets it), so a block's slice of a panel stays in L1 while every row tile reads
  it, and the broadcast operand's block in L2 while every panel sweeps it;
- the block's slice of a panel fits in L1_PANEL_SHARE of the L1 data cache;
- a reduction whose whole panel fits (the Transformer's qkv, K = 128) keeps one loop;
- 1024^3, whose 4 MiB output every block would reload from L3, is blocked by rows of its
  output first on AVX-512 (test_schedule_gemm_row_blocks.py) and runs whole elsewhere.

One AVX-512 core, CPU time: 512^3 A B 151 -> 156 GFLOP/s, a [128, 512] d/dw over 1024
133 -> 141. Every form still computes numpy's product; AVX2 and AArch64 targets block too.
"""

import numpy as np
import pytest

from tvmfront import schedule as cpu_schedule
from tvmfront.schedule.params import L1_PANEL_SHARE, CpuParams
from tvmfront.target import resolve_target

PARALLEL, UNROLLED, VECTORIZED = 1, 3, 2  # tirx.ForKind


def _gemm(form, m, k, n):
    """([A, B], C, numpy's product) of C[m, n] = A B, A B^T or A^T B over k."""
    from tvmfront._tvm import te

    r = te.reduce_axis((0, k), "k")
    if form == "A B":
        a, b = te.placeholder((m, k), name="a"), te.placeholder((k, n), name="b")
        c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="c")
        return [a, b], c, lambda a, b: a @ b
    if form == "A B^T":
        a, b = te.placeholder((m, k), name="a"), te.placeholder((n, k), name="b")
        c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[j, r], axis=r), name="c")
        return [a, b], c, lambda a, b: a @ b.T
    a, b = te.placeholder((k, m), name="a"), te.placeholder((k, n), name="b")
    c = te.compute((m, n), lambda i, j: te.sum(a[r, i] * b[r, j], axis=r), name="c")
    return [a, b], c, lambda a, b: a.T @ b


def _schedule(form, m, k, n, target):
    """(rule, loops of the tile block c_o or None, loops of the update block (inside c_o),
    run()) where a loop is (extent, kind) and run() compiles the kernel and returns (its
    output, numpy's)."""
    from tvmfront._tvm import s_tir, te, to_device, tvm

    inputs, out, ref = _gemm(form, m, k, n)
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
    sch = s_tir.Schedule(func)

    def loops(name):
        return [(int(sch.get(lp).extent), int(sch.get(lp).kind))
                for lp in sch.get_loops(sch.get_sblock(name))]

    try:
        blocks = loops("c_o")
    except Exception:  # noqa: BLE001 - no such block: the reduction runs whole
        blocks = None

    def run():
        rng = np.random.default_rng(0)
        args = [rng.standard_normal([int(d) for d in t.shape]).astype("float32") for t in inputs]
        result = tvm.runtime.empty((m, n), "float32", tvm.cpu())
        tvm.compile(func, target=target)(*[to_device(a) for a in args], result)
        return result.numpy(), ref(*args)

    return rule, blocks, loops("c" if blocks is not None else "c_update"), run


@pytest.mark.parametrize("form", ["A B", "A B^T", "A^T B"])
@pytest.mark.parametrize("m, k, n", [(512, 512, 512), (512, 1024, 128)])
def test_a_long_reduction_runs_in_blocks_that_keep_a_panel_slice_in_l1(form, m, k, n):
    target = resolve_target("x86")
    params = CpuParams(target)
    if form == "A^T B" and m > n:
        # its vectors run along the wider output axis, m (test_schedule_gemm_vector_axis)
        m, n = n, m
    rule, blocks, inner, run = _schedule(form, m, k, n, target)
    if (m, k, n) == (512, 1024, 128) and form != "A^T B":
        # B (512 KiB) within L2 and A bigger: rows outer instead, each row tile sweeping
        # every panel whole (test_schedule_gemm_rows_outer.py)
        assert "rows outer" in rule and "k-blocks" not in rule, rule
        got, want = run()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)
        return
    assert "k-blocks of" in rule and blocks is not None, rule
    kc, vec = inner[0][0], inner[-1][0]
    assert inner[-1][1] == VECTORIZED and inner[1][1] == UNROLLED, inner
    assert kc < k and k % kc == 0, inner
    assert kc * vec * 4 <= params.l1d_bytes * L1_PANEL_SHARE, (kc, vec, params.l1d_bytes)
    # one iteration per core, then the blocks of the reduction, then the panels and rows
    assert blocks[0] == (params.cores, PARALLEL), blocks
    assert blocks[1] == (k // kc, 0), blocks
    got, want = run()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("target, rows", [("x86:avx2", 192), ("aarch64", 128)])
def test_other_targets_block_the_reduction_too(target, rows):
    # (AVX2's 6-row tile over 128 rows would leave a partial tile, which runs the reduction
    # whole: test_schedule_gemm_remainder_tile.py; 192 rows are 32 whole tiles)
    rule, blocks, inner, _ = _schedule("A^T B", rows, 1024, 512, resolve_target(target))
    assert "k-blocks of" in rule and blocks is not None, rule
    assert blocks[1][0] * inner[0][0] == 1024, (blocks, inner)


def test_a_panel_within_l1_runs_whole():
    """The Transformer's qkv, [1024, 128] @ [384, 128]^T: a 128-step panel fits in L1."""
    rule, blocks, inner, run = _schedule("A B^T", 1024, 128, 384, resolve_target("x86"))
    assert "k-blocks" not in rule and blocks is None, rule
    assert 128 in [e for e, _ in inner], inner
    got, want = run()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
