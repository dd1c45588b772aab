"""What a padded convolution's derived gradients read. A derived gradient that sums a
zero-padded tensor's window over the free output loops is summed over the padded tensor's
interior instead (autodiff._interior_sum): a padded stride-1 convolution's derived d/dw reads
x in place and a zero-extended dy, the explicit gradient's form, which the weight-gradient
rule schedules image by image. Where that would add terms (output shorter than x) or copy
much more (dy over INTERIOR_COPY_RATIO times x_pad), the padded form stays. Its derived d/dx,
the padded input's adjoint cropped, extends dy only over the taps the crop reads
(autodiff._trimmed_extensions). Values: float64 numpy references and finite differences."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import autodiff, ops
from tvmfront import schedule as cpu_schedule
from tvmfront._tvm import te, to_device, tvm
from tvmfront.target import resolve_target


def _tensors(t, seen=None):
    """{name: tensor} of t and everything it reads."""
    seen = {} if seen is None else seen
    if t.op.name not in seen:
        seen[t.op.name] = t
        for parent in getattr(t.op, "input_tensors", []):
            _tensors(parent, seen)
    return seen


def _derived_dw(xs, ws, padding, dtype="float64"):
    x = te.placeholder(xs, dtype, name="x")
    w = te.placeholder(ws, dtype, name="w")
    y = ops.conv2d.te_forward(x, w, padding=padding)
    dy = te.placeholder([int(d) for d in y.shape], dtype, name="dy")
    return [dy, x, w], ops.conv2d.te_grad(dy, x, w, derived=True, padding=padding)[1]


def _dw_reference(dy, x, ws, padding):
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = ws[2:]
    ho, wo = dy.shape[2:]
    return np.stack([np.stack([np.einsum("noij,ncij->oc", dy, xp[:, :, p:p + ho, q:q + wo])
                               for q in range(kw)], -1) for p in range(kh)], -2)


def _run(inputs, out, target, seed=0):
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
    lib = tvm.compile(func, target=target)
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal([int(d) for d in t.shape]).astype(str(t.dtype)) for t in inputs]
    got = tvm.runtime.empty([int(d) for d in out.shape], str(out.dtype), tvm.cpu())
    lib(*[to_device(a) for a in args], got)
    return args, got.numpy(), rule


@pytest.mark.parametrize("xs,ws,padding,extended", [((2, 4, 8, 8), (6, 4, 3, 3), 1, True),
                                                    ((2, 3, 7, 9), (5, 3, 5, 5), 2, True),
                                                    ((1, 4, 6, 10), (4, 4, 3, 5), (1, 2), True),
                                                    # dy 7x7, x 5x5: dy read in bounds
                                                    ((2, 2, 5, 5), (3, 2, 3, 3), 2, False)])
def test_a_padded_conv_s_derived_dw_sums_x_s_pixels_and_equals_numpy(xs, ws, padding,
                                                                      extended):
    inputs, dw = _derived_dw(xs, ws, padding)
    names = _tensors(dw)
    # x read in place (no padded copy of it), dy through a zero-extended copy
    assert not any(n.endswith("_pad") for n in names), sorted(names)
    assert any(n.endswith("_dy_ext") for n in names) == extended, sorted(names)
    (dy, x, _), got, rule = _run(inputs, dw, resolve_target("x86"))
    np.testing.assert_allclose(got, _dw_reference(dy, x, ws, padding), rtol=1e-10,
                               atol=1e-10, err_msg=rule)


@pytest.mark.parametrize("xs,ws,padding,why", [
    ((2, 4, 8, 8), (6, 4, 5, 5), 1, "dy 6x6 shorter than x: the sum over x would add terms"),
    ((2, 1, 8, 8), (16, 1, 3, 3), 1, "dy 16x x_pad's size: the copy would grow too much")])
def test_the_padded_form_stays_where_it_would_add_terms_or_copy_more(xs, ws, padding, why):
    inputs, dw = _derived_dw(xs, ws, padding)
    names = _tensors(dw)
    assert any(n.endswith("_pad") for n in names), (why, sorted(names))
    assert not any(n.endswith("_dy_ext") for n in names), (why, sorted(names))
    (dy, x, _), got, rule = _run(inputs, dw, resolve_target("x86"))
    np.testing.assert_allclose(got, _dw_reference(dy, x, ws, padding), rtol=1e-10,
                               atol=1e-10, err_msg=rule)


def test_the_copy_ratio_bounds_the_shift():
    # 2 -> 4 channels: dy's copy twice x_pad's, shifted; 1 -> 4: four times, not shifted
    assert autodiff.INTERIOR_COPY_RATIO == 2
    shifted = [any(n.endswith("_dy_ext") for n in _tensors(_derived_dw(
        (2, c, 8, 8), (4, c, 3, 3), 1)[1])) for c in (2, 1)]
    assert shifted == [True, False]


@tvf.op
def conv1d_same(x, w):
    """A user's op: a 1-D convolution over a zero-padded signal, gradients derived."""
    n, c, length = x.shape
    o, _, k = w.shape
    pad = int(k) // 2
    xp = te.compute((n, c, length + 2 * pad), lambda a, b, i: te.if_then_else(
        te.all(i >= pad, i < length + pad), x[a, b, i - pad], te.const(0.0, x.dtype)),
        name="xp")
    rc = te.reduce_axis((0, c), "rc")
    rk = te.reduce_axis((0, k), "rk")
    return te.compute((n, o, length), lambda a, b, i: te.sum(
        xp[a, rc, i + rk] * w[b, rc, rk], axis=[rc, rk]), name="conv1d_same")


def test_a_user_op_s_derived_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 3, 11)), rng.standard_normal((4, 3, 5))
    dy = te.placeholder((2, 4, 11), "float64", name="dy")
    grads = autodiff.derive_for_op("conv1d_same", conv1d_same.fn,
                                   [te.placeholder(x.shape, "float64", name="x"),
                                    te.placeholder(w.shape, "float64", name="w")], dy)
    assert any(n.endswith("_dy_ext") for n in _tensors(grads[1])), sorted(_tensors(grads[1]))
    assert tvf.gradcheck(conv1d_same, [x, w], derived=True)


@pytest.mark.parametrize("xs,ws,padding,ext", [((2, 4, 8, 8), (6, 4, 3, 3), 1, (10, 10)),
                                               ((2, 3, 7, 9), (5, 3, 5, 5), 2, (11, 13)),
                                               ((1, 2, 6, 6), (3, 2, 3, 5), (1, 2), (8, 10))])
def test_a_padded_conv_s_derived_dx_extends_dy_over_the_read_taps_only(xs, ws, padding, ext):
    # the padded input's adjoint spans x_pad (8 + 2 rows, 3 taps: dy extended to 12), the
    # crop back to x reads dy over 8 + 3 - 1 rows: 10
    x = te.placeholder(xs, "float64", name="x")
    w = te.placeholder(ws, "float64", name="w")
    y = ops.conv2d.te_forward(x, w, padding=padding)
    dy = te.placeholder([int(d) for d in y.shape], "float64", name="dy")
    derived, explicit = (ops.conv2d.te_grad(dy, x, w, derived=d, padding=padding)[0]
                         for d in (True, False))
    extended = [t for n, t in _tensors(derived).items() if n.endswith("_dy_ext")]
    assert [tuple(int(d) for d in t.shape[2:]) for t in extended] == [ext], \
        sorted(_tensors(derived))
    target = resolve_target("x86")
    (dyv, xv, wv), got, rule = _run([dy, x, w], derived, target, seed=5)
    _, want, _ = _run([dy, x, w], explicit, target, seed=5)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=rule)
