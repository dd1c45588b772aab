"""A strided convolution's d/dx whose phases store into dx themselves
(tvmfront/schedule/phase_writes.py): no interleave pass and no phase buffers are left in the
scheduled TIR, each phase's tile is written during the next tile's reduction, the values are
the reference's and the same bits as through the interleave; where the interleave is not a
plain transpose of s * s phases it stays."""

import numpy as np
import pytest

from tvmfront import ops
from tvmfront._tvm import te
from tvmfront.schedule import conv_phases, phase_writes
from tvmfront.schedule.failures import NotApplicable
from tvmfront.tir_walk import statements

from _scheduled import run, schedule
from test_conv_grad import _conv_grads_ref


def _dx(xs, ws, stride, padding, derived):
    x, w = te.placeholder(xs, "float32", name="x"), te.placeholder(ws, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=stride, padding=padding)
    dy = te.placeholder(y.shape, "float32", name="dy")
    dx = ops.conv2d.te_grad(dy, x, w, stride=stride, padding=padding, derived=derived)[0]
    rng = np.random.default_rng(5)
    xv, wv = rng.standard_normal(xs), rng.standard_normal(ws)
    dyv = rng.standard_normal([int(d) for d in y.shape])
    want = _conv_grads_ref(xv, wv, dyv, stride, padding)[0]
    return [dy, w], dx, [dyv.astype("float32"), wv.astype("float32")], want


def _blocks_writing(func, name):
    """Names of the blocks that store into the buffer `name`, and every annotation key left."""
    writers, keys = [], set()
    for node in statements(func.body):
        if type(node).__name__ in ("SBlock", "For"):
            keys.update(node.annotations.keys())
        if type(node).__name__ == "SBlock" and any(w.source.name == name for w in node.writes):
            writers.append(node.name_hint)
    return writers, keys


@pytest.mark.parametrize("derived", [False, True])
@pytest.mark.parametrize("xs, ws, target, tiled_by_channels", [
    ((32, 64, 14, 14), (64, 64, 3, 3), "x86:avx512", True),  # the bench's 64->64 @14 s2
    ((32, 64, 14, 14), (64, 64, 3, 3), "x86:avx2", True),
    ((16, 32, 16, 16), (64, 32, 3, 3), "x86:avx512", True),  # ResNet's 32->64 @16 s2
    # AVX2: 8 columns are one vector, the phases laid out NCHW: the interleave stays
    ((16, 32, 16, 16), (64, 32, 3, 3), "x86:avx2", False)])
def test_the_phases_write_dx_and_the_interleave_is_gone(monkeypatch, xs, ws, target,
                                                        tiled_by_channels, derived):
    inputs, dx, args, want = _dx(xs, ws, 2, 1, derived)
    outs = []
    for direct in (tiled_by_channels, False):
        monkeypatch.setattr(conv_phases, "DIRECT_WRITES", direct)
        func, rule, tgt = schedule(inputs, dx, target)
        assert rule.startswith("tvmfront.conv_phases: phases per image["), rule
        assert rule.endswith(", written into dx]") == direct, rule
        writers, keys = _blocks_writing(func, dx.op.name)
        root = func.body.block
        phases = [b.name for b in root.alloc_buffers if b.name.rsplit("_", 1)[-1] in
                  ("dx00", "dx01", "dx10", "dx11", "p00", "p01", "p10", "p11")]
        if direct:
            # four phases' write-backs, each twice: in the next tile's reduction, and the
            # last tile's after the tiles
            assert len(writers) == 8 and dx.op.name not in writers, writers
            assert not phases, phases
        else:
            assert writers == [dx.op.name] and len(phases) == 4, (writers, phases)
        assert not {k for k in keys if k.startswith("tvmfront.")} - {"tvmfront.schedule_rule"}
        got, = run(func, tgt, args, [xs])
        outs.append(got)
    np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=2e-3)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_a_stride_with_phases_of_no_tap_keeps_the_interleave():
    """1x1 at stride 3: two of the three phases along each axis read no tap, and the
    interleave writes zeros there; phase_map refuses it and the values stay right."""
    inputs, dx, args, want = _dx((32, 16, 12, 12), (32, 16, 1, 1), 3, 0, False)
    func, rule, tgt = schedule(inputs, dx, "x86:avx512")
    assert "written into dx" not in rule, rule
    got, = run(func, tgt, args, [(32, 16, 12, 12)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_phase_map_reads_each_phase_at_its_place():
    """The map that the rewrite trusts: each (P, Q) of a stride-2 interleave to its own
    buffer, read at (i // 2, j // 2)."""
    inputs, dx, _, _ = _dx((4, 8, 6, 6), (8, 8, 3, 3), 2, 1, False)
    func = te.create_prim_func(inputs + [dx])
    block = next(n for n in statements(func.body)
                 if type(n).__name__ == "SBlock" and n.name_hint == dx.op.name)
    phases, (a, c, _, _), y, x = phase_writes.phase_map(block, 2)
    assert sorted(src.name for src, _ in phases) == \
        [f"{dx.op.name}{p}{q}" for p in "01" for q in "01"]
    for source, (p, q, axes) in phases:
        assert source.name.endswith(f"{p}{q}")
        assert [v.name for v in axes] == [v.name for v in (a, c, y, x)]
    with pytest.raises(NotApplicable):
        phase_writes.phase_map(block, 3)
