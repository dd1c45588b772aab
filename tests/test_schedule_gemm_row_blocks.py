"""A GEMM whose output is past REDUCTION_BLOCK_MAX_OUTPUT_BYTES (1024^3: 4 MiB) and whose vector
panel is past L1 is blocked as GotoBLAS blocks it, on AVX-512 and AVX2 (tvmfront/schedule/gemm.py,
_row_blocks):

- each core takes an equal share of the panels (the output's columns) and sweeps it block of
  rows by block of rows, its share of a block at most OUTPUT_BLOCK_L2_SHARE of L2, accumulated in
  a buffer laid out panel after panel ([columns // vec, rows, vec]: the output's rows, 4 KiB
  apart, would share L1 sets with the panel), copied out after the block;
- inside a block, the blocks of the reduction (KC), then the panels, then the row tiles;
- A of A^T B goes into panels of the tile's rows block by block, each core making the block it
  reads (rows x KC), as GotoBLAS packs A;
- AVX2's 6-row tile over 1024 rows (171 tiles, the last of 4 rows: _remainder_tile) in blocks of
  a divisor of 171, the partial tile peeled off by LoopPartition;
- a weight already in panels (inference, tvmfront.prepack) is blocked the same way;
- AArch64 (NEON, 128-bit vectors, untried) keeps the whole reduction.

1024^3 on the 2-core AVX-512 Xeon, 2 threads, against numpy interleaved: AVX-512 A B, A B^T,
A^T B 0.91-0.93x whole, 0.95-1.01x in row blocks taken by the cores in turn (before), 0.98-1.04x
now; AVX2 code against OpenBLAS's Haswell kernels 0.84-0.96x whole, 0.92-1.00x now. Every form
computes numpy's product, scheduled for each class and run on this host.
"""

import math

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


def _host_runnable(target):
    """`target`, or this host's where it lacks the target's features (AVX-512 code on an AVX2
    machine: the schedule stays, LLVM splits its vectors)."""
    from tvmfront.runtime.cpu import missing_features, required_features
    from tvmfront.target import target_json

    missing = missing_features(required_features(target_json(target)))
    return resolve_target("x86" if missing else target)


def _run(func, inputs, out, ref, target):
    """Build as tvmfront.build does (LoopPartition peels a partial tile) for `target` (where
    this host runs it), run on this host."""
    from tvmfront._tvm import to_device, tvm
    from tvmfront.build import compile_kernels

    rng = np.random.default_rng(0)
    args = [rng.standard_normal([int(d) for d in t.shape]).astype("float32") for t in inputs]
    result = tvm.runtime.empty([int(d) for d in out.shape], "float32", tvm.cpu())
    compile_kernels(func, _host_runnable(target))(*[to_device(a) for a in args], result)
    return result.numpy(), ref(*args)


TARGETS = ["x86:avx512", "x86:avx2"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("form", ["A B", "A B^T", "A^T B"])
def test_a_big_output_is_blocked_by_cores_over_columns_then_rows_reduction_panels(form, target):
    target = resolve_target(target)
    params = CpuParams(target)
    inputs, out, _ = _gemm(form, 1024, 1024, 1024)
    _, rule, sch = _schedule(inputs, out, target)
    assert "row blocks of" in rule and "k-blocks of" in rule, rule
    loops, acc = _update_block(sch, "c")
    (cores, kind), (blocks, _), (k_blocks, _), (panels, _), (row_tiles, _), (kc, _) = loops[:6]
    tile, (vec, vec_kind) = loops[6][0], loops[7]
    rows = row_tiles * tile
    assert kind == PARALLEL and cores == params.cores and vec_kind == VECTORIZED, loops
    assert cores * panels * vec == 1024, loops  # the cores split the columns
    # the blocks cover the rows (AVX2: 171 tiles of 6, the last partial)
    assert blocks * rows >= 1024 > blocks * rows - tile, loops
    assert rows * (1024 // cores) * 4 <= params.l2_bytes * OUTPUT_BLOCK_L2_SHARE, loops
    assert k_blocks * kc == 1024 and kc * vec * 4 <= params.l1d_bytes * L1_PANEL_SHARE, loops
    # the block's accumulator: panel after panel, not the output's rows
    assert acc.name != "c" and [int(d) for d in acc.shape] == [1024 // vec, 1024, vec], acc
    if form == "A^T B":
        # A's panels made by each core per block of rows and of the reduction, just before
        # its panels sweep them (not one copy of the whole, made and read by both cores)
        copy = sch.get_sblock("a_global")
        outer = [(int(sch.get(lp).extent), int(sch.get(lp).kind)) for lp in sch.get_loops(copy)]
        assert outer[:3] == loops[:3], (outer, loops)
        inner = [int(sch.get(lp).extent) for lp in sch.get_loops(copy)[3:]]
        assert math.prod(inner) == rows * kc, (inner, rows, kc)


def test_avx2_row_blocks_peel_the_partial_tile():
    """171 tiles of 6 rows in blocks of a divisor: LoopPartition peels the last, partial tile
    off, as without blocks (test_schedule_gemm_remainder_tile.py): no check left per tile."""
    from test_schedule_gemm_remainder_tile import _checks_left, _lowered

    inputs, out, _ = _gemm("A^T B", 1024, 1024, 1024)
    func, rule, _ = _schedule(inputs, out, resolve_target("x86:avx2"))
    assert "tiled[6xv16" in rule and "row blocks of" in rule, rule
    lowered = _lowered(func)
    assert not _checks_left(lowered), _checks_left(lowered)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("form", ["A B", "A B^T", "A^T B"])
def test_row_blocks_compute_the_product(form, target):
    # 1024 x 512 outputs (2 MiB) over 512 steps (AVX2: the last of 171 tiles partial)
    inputs, out, ref = _gemm(form, 1024, 512, 512)
    func, rule, _ = _schedule(inputs, out, resolve_target(target))
    assert "row blocks of" in rule, rule
    got, want = _run(func, inputs, out, ref, target)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3, err_msg=rule)


@pytest.mark.parametrize("target, p", [("x86:avx512", 32), ("x86:avx2", 16)])
def test_a_weight_already_in_panels_is_blocked_too(target, p):
    """tvmfront.prepack's dense over a weight packed once into panels [n // p, k, p]."""
    from tvmfront._tvm import s_tir, to_device, tvm
    from tvmfront.build import compile_kernels
    from tvmfront.prepack import _DENSE, _prim_func

    m, k, n = 1024, 512, 1024
    dense = _prim_func(_DENSE, m=m, k=k, n=n, no=n // p, p=p)
    func, rule = cpu_schedule.schedule_prim_func(dense, resolve_target(target))
    assert "row blocks of" in rule and "k-blocks of" in rule, rule
    loops, _ = _update_block(s_tir.Schedule(func), "dense")
    assert loops[0][1] == PARALLEL, loops
    rng = np.random.default_rng(0)
    x, w = (rng.standard_normal(s).astype("float32") for s in ((m, k), (n, k)))
    panels = np.ascontiguousarray(w.reshape(n // p, p, k).transpose(0, 2, 1))
    got = tvm.runtime.empty((m, n), "float32", tvm.cpu())
    compile_kernels(func.with_attr("global_symbol", "dense"), _host_runnable(target))(
        to_device(x), to_device(panels), got)
    np.testing.assert_allclose(got.numpy(), x @ w.T, rtol=1e-4, atol=2e-3, err_msg=rule)


def test_neon_keeps_the_whole_reduction():
    inputs, out, _ = _gemm("A B", 1024, 1024, 1024)
    _, rule, sch = _schedule(inputs, out, resolve_target("aarch64"))
    assert "row blocks" not in rule and "k-blocks" not in rule, rule
    loops, acc = _update_block(sch, "c")
    assert 1024 in [e for e, _ in loops] and acc.name == "c", (loops, acc)
