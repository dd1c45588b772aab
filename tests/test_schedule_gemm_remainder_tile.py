"""On AVX2 (16 vector registers) a GEMM's register tile takes the whole accumulator budget, 6 rows
x v16 (12 accumulators), where the rows have no such divisor (1024: 4 x v16, 8 accumulators,
before), the last tile partial (tvmfront/schedule/gemm.py, _remainder_tile):

- its predicate is marked likely (schedule/predicates.py), and LoopPartition
  (build.PARTITION_CONST_LOOPS) peels the partial tile off the row loop, so the full tiles run
  without checks;
- the reduction runs whole (no blocks: blockize refuses the predicated tile);
- A of A^T B, whose rows lie far apart along the reduction, goes into panels of 6 rows, the
  last one padded with zeros;
- 32-register targets (AVX-512, AArch64) keep their divisor tiles.

AVX2 code against OpenBLAS's Haswell kernels on the 2-core AVX-512 Xeon, 1 / 2 threads:
1024^3 A B 1.10x / 1.18x (whole reduction, before row blocks), 512^3 1.21x / 1.15x. Values
against numpy, scheduled for AVX2, built as tvmfront.build does and run on this host.
"""

import numpy as np
import pytest

from tvmfront import schedule as cpu_schedule
from tvmfront.target import resolve_target

from test_schedule_gemm_blocks import _gemm

UNROLLED = 3  # tirx.ForKind


def _schedule(inputs, out, target="x86:avx2"):
    from tvmfront._tvm import s_tir, te

    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]),
                                                 resolve_target(target))
    return func, rule, s_tir.Schedule(func)


def _loops(sch, name):
    return [(int(sch.get(lp).extent), int(sch.get(lp).kind))
            for lp in sch.get_loops(sch.get_sblock(name))]


def _lowered(func):
    """The kernel's TIR after TVM's lowering passes up to LoopPartition (a subset of the s_tir
    pipeline, in its order), under the build's pass context."""
    from tvmfront._tvm import s_tir, tirx, tvm
    from tvmfront.build import kernel_pass_context

    passes = [s_tir.transform.LowerInitBlock(),
              s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
              s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation(),
              s_tir.transform.StmtSimplify(), s_tir.transform.LowerOpaqueBlock(),
              tirx.transform.FlattenBuffer(), s_tir.transform.LoopPartition()]
    with kernel_pass_context():
        mod = tvm.transform.Sequential(passes)(tvm.IRModule({"main": func}))
    return mod["main"].script()


def _checks_left(lowered):
    """The conditions left in lowered TIR that LoopPartition did not decide (it leaves
    T.bool(True) / T.bool(False) where it peeled a loop)."""
    return [line.strip() for line in lowered.splitlines()
            if line.strip().startswith("if ") and "T.bool(" not in line]


def _run(func, inputs, out, ref):
    """Build the AVX2 kernel as tvmfront.build does (its pass context: LoopPartition; its TIR
    pipeline) and compare it with numpy on this host."""
    from tvmfront._tvm import to_device, tvm
    from tvmfront.build import compile_kernels

    rng = np.random.default_rng(0)
    args = [rng.standard_normal([int(d) for d in t.shape]).astype("float32") for t in inputs]
    got = tvm.runtime.empty([int(d) for d in out.shape], "float32", tvm.cpu())
    compile_kernels(func, resolve_target("x86:avx2"))(*[to_device(a) for a in args], got)
    np.testing.assert_allclose(got.numpy(), ref(*args), rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("form", ["A B", "A B^T"])
def test_avx2_tiles_1024_rows_by_6_and_peels_the_partial_tile(form):
    # a 1 MiB output: the reduction whole (a bigger one goes into row blocks, whose own
    # partial tile test_schedule_gemm_row_blocks.py checks)
    inputs, out, _ = _gemm(form, 1024, 1024, 256)
    func, rule, sch = _schedule(inputs, out)
    assert "tiled[6xv16" in rule and "k-blocks" not in rule, rule
    loops = _loops(sch, "c_update")
    assert (171, 0) in loops and (6, UNROLLED) in loops and (1024, 0) in loops, loops
    # 170 full tiles without checks, then the partial one (4 rows); unpartitioned, one loop
    # of 171 checks every row of every tile (5x slower)
    lowered = _lowered(func)
    assert "range(170)" in lowered and not _checks_left(lowered), _checks_left(lowered)
    assert "tvmfront.likely_predicate" not in func.script()


@pytest.mark.parametrize("form", ["A B", "A B^T", "A^T B"])
@pytest.mark.parametrize("m, k, n", [(64, 64, 256), (256, 256, 256), (512, 512, 512)])
def test_partial_tiles_compute_the_product(form, m, k, n):
    # 64 rows (the MLP's batch): 11 tiles, the last of 4
    inputs, out, ref = _gemm(form, m, k, n)
    func, rule, _ = _schedule(inputs, out)
    assert "tiled[6xv16" in rule, rule
    _run(func, inputs, out, ref)


def test_a_partial_tile_writes_back_its_rows_with_an_epilogue():
    """200 rows (33 tiles of 6 and one of 2), bias and ReLU absorbed by the write-back."""
    from tvmfront._tvm import te

    m, k, n = 200, 128, 256
    r = te.reduce_axis((0, k), "k")
    x, w = te.placeholder((m, k), name="x"), te.placeholder((n, k), name="w")
    bias = te.placeholder((n,), name="bias")
    mm = te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[j, r], axis=r), name="c")
    out = te.compute((m, n), lambda i, j: te.max(mm[i, j] + bias[j], 0.0), name="out")
    func, rule, _ = _schedule([x, w, bias], out)
    assert "tiled[6xv16" in rule, rule
    lowered = _lowered(func)
    assert "range(33)" in lowered and not _checks_left(lowered), _checks_left(lowered)
    _run(func, [x, w, bias], out, lambda x, w, b: np.maximum(x @ w.T + b, 0))


def test_a_transposed_far_operand_goes_into_partial_panels():
    """A of A^T B, its rows far apart along the reduction, read in place by the 6-row tile would
    touch a new row every step (0.43x the time of 4 x v16 in panels of 4): it is copied into
    panels of 6 rows, the last one padded with zeros."""
    inputs, out, ref = _gemm("A^T B", 200, 64, 256)
    func, rule, sch = _schedule(inputs, out)
    assert "tiled[6xv16" in rule and "a (panels of 6)" in rule, rule
    reads = [r.source for r in sch.get(sch.get_sblock("c_update")).reads]
    panels = next(b for b in reads if b.name.startswith("a_"))
    assert [int(d) for d in panels.shape] == [34, 64, 6], panels.shape  # 200 rows -> 204
    assert not _checks_left(_lowered(func)), _checks_left(_lowered(func))
    _run(func, inputs, out, ref)


@pytest.mark.parametrize("target", ["x86:avx512", "aarch64"])
def test_32_register_targets_keep_divisor_tiles(target):
    inputs, out, _ = _gemm("A B", 1000, 256, 1024)
    _, rule, sch = _schedule(inputs, out, target)
    rows = next(e for e, kind in _loops(sch, "c_update") if kind == UNROLLED)
    assert 1000 % rows == 0, (rule, rows)


def test_likely_predicates_wraps_only_marked_blocks():
    from tvmfront._tvm import s_tir, te
    from tvmfront.schedule.predicates import LIKELY, likely_predicates, mark_likely

    x = te.placeholder((10, 16), name="x")
    y = te.compute((10, 16), lambda i, j: x[i, j] * 2.0, name="y")
    z = te.compute((10, 16), lambda i, j: y[i, j] + 1.0, name="z")
    sch = s_tir.Schedule(te.create_prim_func([x, z]))
    for name in ("y", "z"):
        sch.split(sch.get_loops(sch.get_sblock(name))[0], factors=[None, 4])  # 12 rows > 10
    mark_likely(sch, sch.get_sblock("z"))
    text = likely_predicates(sch.mod["main"]).script()
    assert text.count("T.where(T.likely(") == 1 and text.count("T.where(") == 2, text
    assert LIKELY not in text


def test_rows_outer_partial_tiles_peel_the_parallel_row_loop():
    """The Transformer's first Linear, [1024, 128] @ [512, 128]^T + bias, its row tiles
    outermost (gemm._rows_outer) and run by the thread pool alone: 170 parallel full tiles."""
    from tvmfront._tvm import te

    m, k, n = 1024, 128, 512
    r = te.reduce_axis((0, k), "k")
    x, w = te.placeholder((m, k), name="x"), te.placeholder((n, k), name="w")
    bias = te.placeholder((n,), name="bias")
    mm = te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[j, r], axis=r), name="c")
    out = te.compute((m, n), lambda i, j: mm[i, j] + bias[j], name="out")
    func, rule, _ = _schedule([x, w, bias], out)
    assert "tiled[6xv16" in rule and "rows outer" in rule, rule
    lowered = _lowered(func)
    assert "T.parallel(170)" in lowered and not _checks_left(lowered), _checks_left(lowered)
    _run(func, [x, w, bias], out, lambda x, w, b: x @ w.T + b)


@pytest.mark.parametrize("m, k, n, order", [
    (1024, 128, 512, "rows outer"),  # the Transformer's Linear at batch 64 (4096 rows there)
    (1024, 1024, 1024, "panels first"),  # bench/peers.py's 1024 A B^T
    (64, 256, 256, "panels first")])  # the MLP's 256 -> 256 Linear at batch 64
def test_a_weight_already_in_panels_takes_partial_tiles_too(m, k, n, order):
    """tvmfront.prepack's inference dense over a weight packed once into panels
    [n // 16, k, 16]. Panels first, the thread pool takes the panel index (n // 16 panels, an
    axis of its own): counted as the vector axis's extent // 16, one panel, it once left
    these kernels 4 x v16 (1024^3 on 2 AVX2 threads 0.80x numpy, A packed in panels of 4 rows;
    6 x v16 0.93x; the MLP's forward at batch 64 1.05x faster)."""
    from tvmfront._tvm import to_device, tvm
    from tvmfront.build import compile_kernels
    from tvmfront.prepack import _DENSE, _prim_func

    dense = _prim_func(_DENSE, m=m, k=k, n=n, no=n // 16, p=16)
    func, rule = cpu_schedule.schedule_prim_func(dense, resolve_target("x86:avx2"))
    assert "tiled[6xv16" in rule and ("rows outer" in rule) == (order == "rows outer"), rule
    assert "panels of" not in rule, rule  # A read in place, as in the unpacked A B^T
    func = func.with_attr("global_symbol", "dense")
    assert not _checks_left(_lowered(func)), _checks_left(_lowered(func))
    rng = np.random.default_rng(0)
    x, w = (rng.standard_normal(s).astype("float32") for s in ((m, k), (n, k)))
    panels = np.ascontiguousarray(w.reshape(n // 16, 16, k).transpose(0, 2, 1))
    got = tvm.runtime.empty((m, n), "float32", tvm.cpu())
    compile_kernels(func, resolve_target("x86:avx2"))(to_device(x), to_device(panels), got)
    np.testing.assert_allclose(got.numpy(), x @ w.T, rtol=1e-4, atol=2e-3, err_msg=rule)


@pytest.mark.parametrize("m, k, n", [(200, 256, 128), (512, 128, 128)])
def test_a_t_b_whose_a_goes_into_panels_runs_its_panels_first(m, k, n):
    """A^T B with B's panels small and A bigger: rows outer by _rows_outer, until A goes into
    panels of the tile's rows, which runs the panels first. The tile was chosen for rows outer
    (6 rows over 34 row tiles), the pool then fused 8 panels with the rows, and TVM refused to
    build the unrolled partial tile ("Cannot unroll non-constant loop")."""
    inputs, out, ref = _gemm("A^T B", m, k, n)
    func, rule, _ = _schedule(inputs, out)
    assert "panels of" in rule and "rows outer" not in rule, rule
    _run(func, inputs, out, ref)


@pytest.mark.parametrize("m", [512, 384])
def test_a_tile_written_back_transposed_takes_6_columns(m):
    """The Transformer's d/dw [1024, m]^T @ [1024, 128]: vectors along the output's rows (A's
    contiguous axis), the tile over 128 columns, written back transposed. 6 columns (21 tiles
    and one of 2), not 4: 0.88x -> 0.91x numpy at m = 512 on 2 AVX2 threads. The partial
    tile, write-back included, is peeled off: no check left."""
    inputs, out, ref = _gemm("A^T B", m, 1024, 128)
    func, rule, sch = _schedule(inputs, out)
    assert "tiled[6xv16" in rule and "b (panels of 6)" in rule, rule
    assert (22, 0) in _loops(sch, "c_update"), _loops(sch, "c_update")
    lowered = _lowered(func)
    assert not _checks_left(lowered), _checks_left(lowered)
    _run(func, inputs, out, ref)


@pytest.mark.parametrize("target, tile", [("x86:avx2", 6), ("x86:avx512", 8)])
def test_a_tile_written_back_transposed_blocks_its_reduction_inside_the_panel(target, tile):
    """The d/dw [1024, 512]^T @ [1024, 128]: the panel's 64 KiB (128 KiB at v32) slice of A,
    read by every row tile, was in L2. The reduction now runs in blocks inside the panel loop
    (each block's slice in L1), the panel's whole [128, vec] accumulator written back after
    them: 0.88x -> 0.92x numpy on 2 AVX2 threads."""
    from test_schedule_gemm_row_blocks import _host_runnable
    from tvmfront.build import compile_kernels

    inputs, out, ref = _gemm("A^T B", 512, 1024, 128)
    func, rule, sch = _schedule(inputs, out, target)
    assert f"tiled[{tile}xv" in rule and "per panel" in rule, rule
    loops = _loops(sch, "c_update")
    # panels (parallel), blocks of the reduction, row tiles, steps of a block, tile, vector
    (panels, kind), (blocks, _), (row_tiles, _), (steps, _) = loops[:4]
    assert kind == 1 and blocks * steps == 1024 and blocks > 1, loops
    assert row_tiles == -(-128 // tile), loops
    rng = np.random.default_rng(0)
    args = [rng.standard_normal([int(d) for d in t.shape]).astype("float32") for t in inputs]
    from tvmfront._tvm import to_device, tvm

    got = tvm.runtime.empty((512, 128), "float32", tvm.cpu())
    compile_kernels(func, _host_runnable(target))(*[to_device(a) for a in args], got)
    np.testing.assert_allclose(got.numpy(), ref(*args), rtol=1e-4, atol=2e-3)


def test_the_parallel_chunks_are_shared_evenly_by_the_cores():
    """An inference dense over a prepacked [384, 128] weight at 1024 rows (the Transformer's
    qkv): 171 row tiles of 6. Chunked into 9 parallel iterations of 19 tiles, one core took 5
    and the other 4 (575 us; 521 us as 171 iterations, AVX2 code at 2 threads). Whatever the
    machine's cores, the chunks divide among them evenly, or the tiles run unchunked."""
    from tvmfront._tvm import s_tir
    from tvmfront.prepack import _DENSE, _prim_func
    from tvmfront.schedule.params import CpuParams

    target = resolve_target("x86:avx2")
    dense = _prim_func(_DENSE, m=1024, k=128, n=384, no=24, p=16)
    func, rule = cpu_schedule.schedule_prim_func(dense, target)
    assert "tiled[6xv16" in rule and "rows outer" in rule, rule
    loops = _loops(s_tir.Schedule(func), "dense_update")
    parallel = [extent for extent, kind in loops if kind == 1]
    cores = CpuParams(target).cores
    assert len(parallel) == 1 and (parallel[0] % cores == 0 or parallel[0] == 171), loops
