"""Op tests, driven by the table in op_specs.py: forward vs numpy (float32 and float64),
gradients vs finite differences (float64); plus gradcheck's own failure modes and eager errors.
"""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops, te

from op_specs import OP_SPECS, OpSpec

SEED = 1234


def _inputs(spec, dtype=None):
    xs = spec.inputs(np.random.default_rng(SEED))
    assert isinstance(xs, list) and xs, f"{spec.id}: inputs must be a non-empty list"
    if dtype is not None:
        xs = [x.astype(dtype) if x.dtype.kind == "f" else x for x in xs]
    return xs


def _params(specs):
    return [pytest.param(s, id=s.id) for s in specs]


GRAD_SPECS = _params([s for s in OP_SPECS if s.grad])
DERIVED_SPECS = _params([s for s in OP_SPECS if s.grad and s.derived])
# Plain functions in ops.__all__ (compositions of ops, or numpy constants) and the tests
# that cover them.
NON_OP_EXPORTS = {
    "flatten": "test_ops.py::test_flatten",
    "split": "test_join.py::test_split_*",
    "causal_mask": "test_masks.py::test_causal_mask_*",
    "padding_mask": "test_masks.py::test_padding_mask_*",
}


# ---- the table itself ------------------------------------------------------------------------
def test_every_op_has_a_spec():
    covered = {s.op.name for s in OP_SPECS}
    exported_ops = {n for n in ops.__all__ if isinstance(getattr(ops, n), tvf.Op)}
    missing = sorted(exported_ops - covered)
    assert not missing, f"ops with no row in OP_SPECS: {missing}"
    # Plain functions in ops.__all__ are compositions of ops; each needs its own test here.
    assert set(ops.__all__) - exported_ops == set(NON_OP_EXPORTS), \
        "a new non-Op export in tvmfront.ops needs a test (see NON_OP_EXPORTS)"
    assert any(s.op is ops.reshape and s.id.startswith("flatten") for s in OP_SPECS)


def test_spec_ids_unique_and_inputs_well_formed():
    ids = [s.id for s in OP_SPECS]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"duplicate spec ids: {dupes}"
    for s in OP_SPECS:
        assert isinstance(s, OpSpec) and isinstance(s.op, tvf.Op), s.id
        xs = _inputs(s)
        for x in xs:
            assert x.dtype == np.float64 or x.dtype.kind in "iub", (s.id, x.dtype)
        if s.grad:
            n = sum(x.size for x in xs if x.dtype.kind == "f")
            assert 0 < n <= 200, f"{s.id}: {n} float input elements (gradcheck cost)"
        # Reproducible: the same seed gives the same inputs.
        for a, b in zip(xs, _inputs(s)):
            np.testing.assert_array_equal(a, b)


def test_flatten():
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2))
    out = ops.flatten(x)  # plain function over reshape; eager on numpy arrays
    assert out.shape == (2, 12) and out.dtype == np.float64
    np.testing.assert_array_equal(out, x.reshape(2, -1))


# ---- forward ---------------------------------------------------------------------------------
def _check_forward(spec, dtype, rtol, atol):
    xs = _inputs(spec, dtype)
    expected = np.asarray(spec.ref(*[x.copy() for x in xs], **spec.attrs))
    if any(x.dtype.kind == "f" for x in xs):  # else the dtype is the op's own (one_hot, masks)
        assert expected.dtype == dtype, f"{spec.id}: reference returned {expected.dtype}"
    got = spec.op.eager(*xs, **spec.attrs)
    assert isinstance(got, np.ndarray), type(got)
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    return xs, got


@pytest.mark.parametrize("spec", _params(OP_SPECS))
def test_forward_float32(spec):
    _check_forward(spec, np.float32, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", _params(OP_SPECS))
def test_forward_float64(spec):
    xs, got = _check_forward(spec, np.float64, rtol=1e-12, atol=1e-12)
    # The op must not write into its inputs.
    for a, b in zip(xs, _inputs(spec, np.float64)):
        np.testing.assert_array_equal(a, b)


# ---- gradient --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", GRAD_SPECS)
def test_gradcheck(spec):
    xs = _inputs(spec)
    assert tvf.gradcheck(spec.op, xs, **spec.attrs) is True
    # vjp: one gradient per input, each of its input's shape and dtype.
    dy = np.ones(np.shape(spec.op.eager(*xs, **spec.attrs)))
    grads = spec.op.vjp(dy, *xs, **spec.attrs)
    assert len(grads) == len(xs)
    for g, x in zip(grads, xs):
        assert g.shape == x.shape and g.dtype == x.dtype, (g.shape, g.dtype, x.shape, x.dtype)


# ---- gradcheck catches wrong gradients -------------------------------------------------------
@tvf.op
def bad_square(x):
    return te.compute(x.shape, lambda *i: x(*i) * x(*i), name="bad_square")


@bad_square.grad
def _(dy, x):
    return [te.compute(x.shape, lambda *i: 3 * x(*i) * dy(*i))]  # should be 2 * x * dy


@tvf.op
def bad_mul(a, b):
    return te.compute(a.shape, lambda *i: a(*i) * b(*i), name="bad_mul")


@bad_mul.grad
def _(dy, a, b):
    # d/da is right, d/db wrongly uses b instead of a.
    return [te.compute(a.shape, lambda *i: dy(*i) * b(*i)),
            te.compute(b.shape, lambda *i: dy(*i) * b(*i))]


@tvf.op
def square_no_explicit_grad(x):
    return te.compute(x.shape, lambda *i: x(*i) * x(*i), name="square_no_explicit_grad")


@tvf.op
def gather_rows(x, idx):
    # x[idx[i]]: a data-dependent index, which autodiff cannot invert
    return te.compute(idx.shape, lambda i: x[idx[i]], name="gather_rows")


def test_gradcheck_rejects_wrong_gradient():
    x = np.random.default_rng(0).uniform(0.5, 2.0, (3, 4))
    np.testing.assert_allclose(bad_square(x), x * x)  # the forward itself is right
    with pytest.raises(tvf.GradientError, match=r"'bad_square'.*input 0 at index"):
        tvf.gradcheck(bad_square, [x])


def test_gradcheck_names_the_wrong_input():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 2.0, (2, 3)), rng.uniform(3.0, 4.0, (2, 3))
    with pytest.raises(tvf.GradientError) as info:
        tvf.gradcheck(bad_mul, [a, b])
    msg = str(info.value)
    assert "'bad_mul'" in msg and "input 1" in msg and "input 0" not in msg, msg


def test_op_without_explicit_gradient_gets_a_derived_one():
    x = np.arange(1.0, 4.0)
    assert not square_no_explicit_grad.has_grad
    np.testing.assert_allclose(square_no_explicit_grad.vjp(np.ones(3), x)[0], 2 * x)
    assert tvf.gradcheck(square_no_explicit_grad, [x])


def test_underivable_op_names_op_expression_and_remedy():
    x, idx = np.arange(4.0), np.array([2, 0, 3])
    np.testing.assert_array_equal(gather_rows(x, idx), x[idx])  # forward works
    with pytest.raises(tvf.GradientError) as info:
        gather_rows.vjp(np.ones(3), x, idx)
    msg = str(info.value)
    assert "op 'gather_rows'" in msg and "index [idx[i]]" in msg and "@gather_rows.grad" in msg


# ---- derived gradients: every op, against finite differences and the explicit gradient -------
@pytest.mark.parametrize("spec", DERIVED_SPECS)
def test_derived_gradient(spec):
    xs = _inputs(spec)
    assert tvf.gradcheck(spec.op, xs, derived=True, **spec.attrs) is True
    out = spec.op.eager(*xs, **spec.attrs)
    dy = np.random.default_rng(1).standard_normal(np.shape(out))
    explicit = spec.op.vjp(dy, *xs, **spec.attrs)
    derived = spec.op.vjp(dy, *xs, derived=True, **spec.attrs)
    for e, d, x in zip(explicit, derived, xs):
        if x.dtype.kind == "f":
            np.testing.assert_allclose(d, e, rtol=1e-9, atol=1e-12)


# ---- eager errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda x: ops.add(x, 2.0),
    lambda x: ops.mul(3, x),
    lambda x: ops.add_scalar(x, 2.0),
    lambda x: ops.pow_scalar(x, 2),
], ids=["add-float", "mul-int-first", "add_scalar-positional", "pow_scalar-positional"])
def test_python_scalar_input_raises_type_error(call):
    with pytest.raises(TypeError, match="keyword"):
        call(np.ones((2, 3)))


def test_conv2d_channel_mismatch():
    x, w = np.ones((1, 2, 5, 5)), np.ones((3, 3, 2, 2))
    with pytest.raises(ValueError, match="conv2d"):
        ops.conv2d(x, w)


def test_conv2d_kernel_larger_than_input():
    with pytest.raises(ValueError, match="conv2d"):
        ops.conv2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)))


@pytest.mark.parametrize("sa,sb", [((3, 4), (5,)), ((2, 3), (3, 2)), ((4, 1), (2, 3, 5))])
def test_broadcast_incompatible_add(sa, sb):
    with pytest.raises(ValueError, match="broadcast"):
        ops.add(np.ones(sa), np.ones(sb))


@pytest.mark.parametrize("spec", [pytest.param(s, id=s.id) for s in OP_SPECS if not s.derived])
def test_no_derived_gradient_is_refused_by_name(spec):
    # Rows marked derived=False (take, embedding) read through data-dependent indices: the
    # derived path must refuse them with the op's name, which is why they carry a .grad.
    assert spec.op.has_grad
    xs = _inputs(spec)
    dy = np.ones(np.shape(spec.op.eager(*xs, **spec.attrs)))
    with pytest.raises(tvf.GradientError, match=f"op '{spec.op.name}'"):
        spec.op.vjp(dy, *xs, derived=True, **spec.attrs)
