"""Zero paddings placed in a loop, copied once with their borders apart
(tvmfront/schedule/pad_borders.py) instead of zero-filled whole and copied over: which blocks
the scheduled TIR holds, and that the convolutions computed through them are numpy's, bit
for bit those of the decomposed form."""

import numpy as np
import pytest

from tvmfront import ops
from tvmfront._tvm import te, to_device
from tvmfront.build import compile_kernels
from tvmfront.schedule import conv_forward, conv_weight_grad, pad_borders, schedule_prim_func
from tvmfront.target import resolve_target

from test_conv_grad import _conv_grads_ref
from test_conv_register_tiles import (AVX512, _block_names, _border_parts, _conv_reference,
                                      _realizes)


def _conv(x_shape, w_shape, stride=1, padding=None):
    x = te.placeholder(x_shape, "float32", name="x")
    w = te.placeholder(w_shape, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=stride,
                              padding=w_shape[2] // 2 if padding is None else padding)
    return te.create_prim_func([x, w, y])


def _dx(x_shape, w_shape, stride):
    x = te.placeholder(x_shape, "float32", name="x")
    w = te.placeholder(w_shape, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=stride, padding=1)
    dy = te.placeholder([int(d) for d in y.shape], "float32", name="dy")
    dx = ops.conv2d.te_grad(dy, x, w, stride=stride, padding=1)[0]
    return te.create_prim_func([dy, w, dx])


@pytest.mark.parametrize("x_shape, w_shape, split", [
    ((32, 64, 28, 28), (32, 64, 3, 3), True),   # padded per 4 rows: 46 KiB a block
    ((32, 32, 28, 28), (64, 32, 3, 3), False)])  # 23 KiB a block: the fill stays
def test_large_padded_blocks_are_copied_with_their_borders_apart(monkeypatch, x_shape, w_shape,
                                                                split):
    """conv_forward's copy per block of rows where its padding is not inlined (forced)."""
    _copy_conv_forward_paddings(monkeypatch)
    func, rule = schedule_prim_func(_conv(x_shape, w_shape), resolve_target(AVX512))
    assert "padded per 4 row(s)" in rule, rule
    blocks = _block_names(func)
    fills = [n for n in blocks if n.endswith("_pad_const")]
    borders = _border_parts(func, "conv2d_pad")
    if split:
        assert not fills and len(borders) == 3, sorted(blocks)
        assert pad_borders.PAD_BORDERS_MIN_BYTES <= 64 * 6 * 30 * 4
    else:
        assert fills and not borders, sorted(blocks)


@pytest.mark.parametrize("make, shapes, rule_has, forced", [
    # conv_forward padded per block of 4 rows (first and last blocks hold rows of zeros)
    (lambda: _conv((16, 64, 28, 28), (32, 64, 3, 3)), [(16, 64, 28, 28), (32, 64, 3, 3)],
     "conv[4xv16, parallel per image, packed w, padded per 4 row(s)]", True),
    # 5x5, borders of 2 columns, 8 rows a block
    (lambda: _conv((16, 32, 28, 28), (32, 32, 5, 5)), [(16, 32, 28, 28), (32, 32, 5, 5)],
     "padded per 4 row(s)", True),
    # the GEMM family's tiles, padded per image
    (lambda: _conv((16, 16, 32, 32), (16, 16, 3, 3)), [(16, 16, 32, 32), (16, 16, 3, 3)],
     "=tiled[", False),
])
def test_convolutions_through_split_paddings_are_numpy_s(monkeypatch, make, shapes, rule_has,
                                                         forced):
    """conv_forward's rule forced onto AVX2 code (so that any x86 host runs it), copying its
    padding, where `forced`."""
    if forced:
        monkeypatch.setattr(conv_forward, "CONV_MIN_VECTOR_BITS", 256)
        _copy_conv_forward_paddings(monkeypatch)
    target = resolve_target("x86:avx2")
    rng = np.random.default_rng(1)
    xv, wv = (rng.standard_normal(s).astype("float32") for s in shapes)
    want = _conv_reference(xv.astype("float64"), wv.astype("float64"), shapes[1][2] // 2, 1)
    outs = []
    for minimum in (pad_borders.PAD_BORDERS_MIN_BYTES, 1 << 40):
        monkeypatch.setattr(pad_borders, "PAD_BORDERS_MIN_BYTES", minimum)
        func, rule = schedule_prim_func(make(), target)
        assert rule_has in rule, rule
        split = not any(n.endswith("_pad_const") for n in _block_names(func))
        assert split == (minimum < 1 << 40), (minimum, sorted(_block_names(func)))
        out = to_device(np.full(want.shape, np.nan, "float32"))
        compile_kernels(func, target)["main"](to_device(xv), to_device(wv), out)
        outs.append(out.numpy())
    np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(outs[0], outs[1])


def _copy_conv_forward_paddings(monkeypatch):
    """conv_forward copies its padding, as where it cannot inline it (padded_terms.py)."""
    monkeypatch.setattr(conv_forward, "inline_padding", lambda sch, block: [])


@pytest.mark.parametrize("x_shape, w_shape, inlined", [
    ((64, 32, 16, 16), (64, 32, 3, 3), True),    # ResNet's 32->64: vectors of channels
    ((64, 16, 32, 32), (32, 16, 3, 3), False)])  # 16->32: vectors along the columns
def test_a_strided_conv_s_dx_phases_read_dy_itself(x_shape, w_shape, inlined):
    """The stride-2 d/dx's phases (conv_phases) that broadcast dy to vectors of channels read
    it through no padded copy: the padding is inlined into them, their terms over it skipped
    under likely predicates (padded_terms.py). Phases vectorized along their columns keep dy
    zero-padded per image, copied with its borders apart (37 KiB). Values are
    test_conv_grad's."""
    scheduled, rule = schedule_prim_func(_dx(x_shape, w_shape, 2), resolve_target(AVX512))
    assert "phases per image" in rule, rule
    blocks = _realizes(scheduled)
    copies = [n for n in blocks if "pad" in n and not n.startswith("conv2d_dx")]
    guarded = [n for n, r in blocks.items() if "likely" in str(r.predicate)]
    if inlined:
        assert not copies, sorted(blocks)
        assert len(guarded) >= 3 and all(n.endswith("_update") for n in guarded), guarded
    else:
        assert copies and not guarded, sorted(blocks)
        assert not any(n.endswith("_pad_const") for n in blocks), sorted(blocks)


def test_a_strided_dw_pads_the_columns_its_windows_read(monkeypatch):
    """ResNet's 3x3 s2 16->32 @32 d/dw, where its padding is not inlined (forced; inlined,
    padded_terms.py, it reads x in place), pads x image by image inside the parallel loop
    (_padded_weight_grad): its windows read 33 of the 34 padded columns, the last left out,
    split as border and interior there too (one AVX-512 core: 1.05x). Values as numpy's
    where the host has AVX-512."""
    monkeypatch.setattr(conv_weight_grad, "inline_padding", lambda sch, blocks: [])
    x = te.placeholder((64, 16, 32, 32), "float32", name="x")
    w = te.placeholder((32, 16, 3, 3), "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=2, padding=1)
    dy = te.placeholder([int(d) for d in y.shape], "float32", name="dy")
    dw = ops.conv2d.te_grad(dy, x, w, stride=2, padding=1)[1]
    scheduled, rule = schedule_prim_func(te.create_prim_func([dy, x, dw]),
                                         resolve_target(AVX512))
    assert "x padded and dy_t per image" in rule, rule
    blocks = _block_names(scheduled)
    assert not any(n.endswith("_pad_const") for n in blocks), sorted(blocks)
    assert any(n.startswith("conv2d_dw_pad_") for n in blocks), sorted(blocks)
    from tvmfront._tvm import llvm_host_cpu_features
    if "avx512f" not in (llvm_host_cpu_features() or set()):
        return
    rng = np.random.default_rng(2)
    dyv = rng.standard_normal([int(d) for d in y.shape]).astype("float32")
    xv = rng.standard_normal((64, 16, 32, 32)).astype("float32")
    out = to_device(np.full((32, 16, 3, 3), np.nan, "float32"))
    compile_kernels(scheduled, resolve_target("x86"))["main"](to_device(dyv), to_device(xv), out)
    _, want = _conv_grads_ref(xv, np.zeros((32, 16, 3, 3)), dyv, 2, 1)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=2e-2)
