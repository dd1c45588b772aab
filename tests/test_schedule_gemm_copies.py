"""The GEMM family's operand copies (tvmfront/schedule/gemm.py) move whole cache lines.

1. A transposed copy of an operand too small for panels (a [128, 32] weight: x @ w.T
   vectorized over w's rows) runs by TRANSPOSE_TILE-square tiles, its contiguous side
   innermost and vectorized, not column by column (a [256, 64] one, one core: 52 -> 30 us).
2. A transposing panel copy goes row by row of the panel, a source cache line at a time,
   element by element: gathered column by column it was slower.
3. Panels narrower than a cache line (the broadcast operand of A^T B, in panels of the
   tile's 4 rows) are copied a cache line of the source at a time: the Transformer's ff2
   d/dw, 1.8 -> 1.6 ms on one core.
4. The broadcast operand of a 1024^3 A B^T (rows 4 KiB apart, 4 MiB) goes into panels of
   the tile's rows too, by blocks of whole cache lines; at 512 it does not.
5. A copy is read by the block it was made for alone: the four phases of a stride-2 conv's
   d/dx each copy the weight in the layout of their own tile. Shared, the first phase's
   panels kept the others from vectorizing the input channels (64->64 @14, b32: 1601 ->
   1331 us), and at small batches from tiling at all (its copy placed in its panel loop
   while the others read it: every phase fell back to scalar tiles).
All still compute numpy's product (5: the unscheduled kernel's values).
"""

import re

import numpy as np
import pytest

from tvmfront import schedule as cpu_schedule
from tvmfront.schedule import gemm
from tvmfront.schedule.params import CACHE_LINE_BYTES
from tvmfront.target import resolve_target


def _form(form, m, k, n):
    from tvmfront import ops
    from tvmfront._tvm import te

    if form == "A B^T":
        x, w = te.placeholder((m, k), name="x"), te.placeholder((n, k), name="w")
        return [x, w], ops.dense.te_forward(x, w), lambda x, w: x @ w.T
    a, dy = te.placeholder((k, m), name="a"), te.placeholder((k, n), name="dy")
    b = te.placeholder((m, n), name="b")
    return [a, dy], ops.matmul.te_grad(dy, a, b)[1], lambda a, dy: a.T @ dy


def _scheduled(form, m, k, n, target="x86"):
    """(scheduled PrimFunc, rule, {copy block name: [(extent, kind) of its loops]}, check)
    where check() compiles it and compares with numpy."""
    from tvmfront._tvm import s_tir, te, to_device, tvm

    target = resolve_target(target)
    inputs, out, ref = _form(form, m, k, n)
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
    sch = s_tir.Schedule(func)
    loops = {}
    for t in inputs:
        name = f"{t.op.name}_global"
        try:
            block = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - not copied
            continue
        loops[name] = [(int(sch.get(lp).extent), int(sch.get(lp).kind))
                       for lp in sch.get_loops(block)]

    def check():
        rng = np.random.default_rng(0)
        args = [rng.standard_normal([int(d) for d in t.shape]).astype("float32") for t in inputs]
        lib = tvm.compile(func, target=target)
        result = tvm.runtime.empty((m, n), "float32", tvm.cpu())
        lib(*[to_device(a) for a in args], result)
        np.testing.assert_allclose(result.numpy(), ref(*args), rtol=1e-4, atol=1e-3)

    return rule, loops, check


PARALLEL, VECTORIZED, UNROLLED = 1, 2, 3  # tirx.ForKind


def test_a_transposed_copy_runs_by_tiles():
    rule, loops, check = _scheduled("A B^T", 64, 32, 128)
    assert rule.endswith("packed w]"), rule  # transposed, not in panels
    t = gemm.TRANSPOSE_TILE
    # [128, 32] -> [32, 128]: tiles of t x t, the copy's rows (w's columns) innermost
    assert loops["w_global"] == [(128 // t, 0), (32 // t, 0), (t, 0), (t, VECTORIZED)], loops
    check()


def test_a_ragged_transposed_copy_keeps_rows():
    """An extent the tile does not divide (the MLP head's 10 outputs) is copied row by row."""
    rule, loops, check = _scheduled("A B^T", 64, 256, 10)
    assert "packed w" in rule, rule
    assert [e for e, _ in loops["w_global"]] == [10, 256], loops
    check()


@pytest.mark.parametrize("m, k, n", [(128, 1024, 512), (256, 256, 256)])
def test_narrow_panels_are_copied_a_cache_line_at_a_time(m, k, n):
    rule, loops, check = _scheduled("A^T B", m, k, n)
    rows = int(rule.split("a (panels of ")[1].split(")")[0])
    line = CACHE_LINE_BYTES // 4
    assert rows < line, rule
    # a's [k, m] -> [m // rows, k, rows]: line // rows panels of one source line innermost
    assert loops["a_global"][-2:] == [(line // rows, 0), (rows, VECTORIZED)], loops
    # outside them, a's k rows by its m // line source lines (fused in parallel, or not)
    assert np.prod([e for e, _ in loops["a_global"]]) == k * m, loops
    check()


@pytest.mark.parametrize("m, k, n", [(512, 512, 512), (64, 256, 256)])
def test_a_transposing_panel_copy_runs_row_by_row_a_cache_line_at_a_time(m, k, n):
    """x @ w.T packs the operand strided along the vectors into panels: each of a panel's
    rows (a column of the source) is copied one cache line of the source at a time,
    element by element (unrolled), not column by column as vectors gathered from the
    panel's rows, whose elements TVM loads one by one (512^3: 0.93 -> 0.90 ms)."""
    rule, loops, check = _scheduled("A B^T", m, k, n)
    (name,) = loops
    line = CACHE_LINE_BYTES // 4
    assert loops[name][-2:] == [(32, 0), (line, UNROLLED)], (rule, loops)
    check()


def test_operands_bigger_than_l1_go_into_panels():
    """The MLP's 256x256 d/dw over a batch of 64 reads two [64, 256] operands (64 KiB each,
    rows 1 KiB apart: more than L1 holds, and aliasing in it) from panels; an operand within
    L1 (the head's [64, 10] gradient) stays as it is."""
    rule, loops, check = _scheduled("A^T B", 256, 64, 256)
    assert "packed dy (panels)+a (panels of" in rule, rule
    check()
    rule, _, _ = _scheduled("A^T B", 10, 64, 256)
    assert "panels of" not in rule, rule


def test_each_panel_is_copied_inside_its_parallel_panel_loop():
    """x @ w.T over a [256, 256] weight: the panel loop runs alone in parallel, and each of
    its iterations copies its own panel of w (16 rows) just before its tiles read it, on
    every core, not the whole weight on one core first."""
    # AVX2, whichever the host: with AVX-512's 32-wide panels the 8 panels would be fused
    # with the row tiles to feed the thread pool, and the copy would run first, whole.
    # 256 rows of x: at 64 the vectors run along the rows instead (x, 4x smaller, copied).
    rule, loops, check = _scheduled("A B^T", 256, 256, 256, target="x86:avx2")
    assert "parallel, packed w (panels)" in rule, rule
    lanes = 8
    panel = 2 * lanes
    assert loops["w_global"][0] == (256 // panel, PARALLEL), loops  # the panel loop
    # inside it, one panel: 256 // line blocks of (panel rows x one line)
    line = CACHE_LINE_BYTES // 4
    assert [e for e, _ in loops["w_global"][1:]] == [256 // line, panel, line], loops
    check()


def test_broadcast_rows_beyond_l2_go_into_panels_of_the_tile():
    """x @ w.T at 1024: x (4 MiB, rows 4 KiB apart: beyond any x86 L2, one L3 stream per tile
    row on every pass of a panel of w) is copied into panels of the tile's rows, by blocks
    of whole cache lines; at 512 (1 MiB) it stays as it is."""
    rule, loops, check = _scheduled("A B^T", 1024, 1024, 1024)
    assert re.search(r"packed w \(panels\)\+x \(panels of \d+\)", rule), rule
    rows = int(rule.split("x (panels of ")[1].split(")")[0])
    line = CACHE_LINE_BYTES // 4
    # x's [1024, 1024] -> [1024 // rows, 1024, rows]: rows x one line of the source innermost
    assert [e for e, _ in loops["x_global"][-2:]] == [rows, line], loops
    check()
    rule, _, _ = _scheduled("A B^T", 512, 512, 512)
    assert "x (panels" not in rule, rule


@pytest.mark.parametrize("target", ["x86", "x86:avx2"])
@pytest.mark.parametrize("batch, channels", [(2, 64), (4, 64), (8, 32)])
def test_each_phase_of_a_strided_dx_copies_the_weight_for_itself(target, batch, channels):
    from tvmfront import ops
    from tvmfront._tvm import te, to_device, tvm

    x = te.placeholder((batch, channels, 14, 14), name="x")
    w = te.placeholder((channels, channels, 3, 3), name="w")
    dy = te.placeholder([int(d) for d in ops.conv2d.te_forward(x, w, stride=2, padding=1).shape],
                        name="dy")
    dx = ops.conv2d.te_grad(dy, x, w, stride=2, padding=1)[0]
    naive = te.create_prim_func([dy, w, dx])
    failures = {}
    func, rule = cpu_schedule.schedule_prim_func(naive, resolve_target(target),
                                                 failures=failures)
    assert not failures, failures
    phases = re.findall(r"conv2d_dx(\d\d)=tiled\[([^]]*)\]", rule)
    assert len(phases) == 4 and all("scalar" not in tile for _, tile in phases), rule
    rng = np.random.default_rng(0)
    args = [to_device(rng.standard_normal([int(d) for d in t.shape]).astype("float32"))
            for t in (dy, w)]
    got = []
    for f in (func, naive):
        out = tvm.runtime.empty(dx.shape, "float32", tvm.cpu())
        tvm.compile(f, target=resolve_target(target))(*args, out)
        got.append(out.numpy())
    np.testing.assert_allclose(got[0], got[1], rtol=1e-4, atol=1e-4)
