"""tvf.opcheck: the one-call check of an op's forward and gradients."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.opcheck import DEFAULT_SHAPES

te = tvf.te


@tvf.op
def swish(x, beta=1.0):
    return te.compute(x.shape, lambda *i: x(*i) * te.sigmoid(x(*i) * beta), name="swish")


def swish_ref(x, beta=1.0):
    return x / (1 + np.exp(-beta * x))


@tvf.op
def cube(x):
    return te.compute(x.shape, lambda *i: x(*i) * x(*i) * x(*i), name="cube")


@cube.grad
def _(dy, x):
    return [te.compute(x.shape, lambda *i: dy(*i) * 2 * x(*i) * x(*i))]  # wrong: should be 3


def test_derived_only_op_passes_with_a_readable_report():
    report = tvf.opcheck(swish, ref=swish_ref, beta=2.0)
    assert report.ok
    text = str(report)
    assert text.startswith("opcheck swish: 12/12 passed")
    checks = {(tuple(map(tuple, r.shapes)), r.dtype, r.check) for r in report.rows}
    for shape in DEFAULT_SHAPES:
        key = tuple(map(tuple, shape))
        assert (key, "float32", "forward vs ref") in checks
        assert (key, "float64", "derived grad vs fd") in checks
    assert ((1,),) in {tuple(map(tuple, r.shapes)) for r in report.rows}  # size 1 swept


def test_explicit_and_derived_both_checked():
    report = tvf.opcheck(tvf.ops.dense, shapes=[[(3, 5), (4, 5)], [(1, 7), (1, 7)]],
                         ref=lambda x, w: x @ w.T)
    names = {r.check for r in report.rows}
    assert names == {"forward vs ref", "grad vs fd", "derived grad vs fd", "derived vs explicit"}


def test_wrong_forward_raises_with_worst_element():
    with pytest.raises(tvf.OpCheckError, match=r"forward at \(\d+.*\): got .*, reference"):
        tvf.opcheck(swish, ref=lambda x, beta=1.0: swish_ref(x, beta) + 1e-3)


def test_wrong_explicit_gradient_is_caught_two_ways():
    with pytest.raises(tvf.OpCheckError) as info:
        tvf.opcheck(cube, ref=lambda x: x ** 3, shapes=[[(3, 4)]])
    text = str(info.value)
    assert "FAIL grad vs fd" in text
    assert "FAIL derived vs explicit" in text
    assert "ok   derived grad vs fd" in text  # the derived gradient is right
    assert "gradcheck failed for op 'cube'" in text


def test_several_inputs_need_shapes():
    with pytest.raises(ValueError, match="takes several inputs; pass shapes="):
        tvf.opcheck(tvf.ops.add)


def test_integer_inputs():
    report = tvf.opcheck(tvf.ops.cross_entropy, shapes=[[(3, 4), (3,)]], int_inputs={1: 4})
    assert report.ok and len(report.rows) == 3


# ---- ops with several outputs ---------------------------------------------------------------

@tvf.op
def row_moments(x, scale=1.0):
    """(scale * mean of each row, mean of squares of each row): two outputs, one input."""
    k1 = tvf.te.reduce_axis((0, x.shape[1]), "k1")
    k2 = tvf.te.reduce_axis((0, x.shape[1]), "k2")
    n = float(int(x.shape[1]))
    mean = tvf.te.compute((x.shape[0],), lambda i: tvf.te.sum(x[i, k1] * (scale / n), axis=k1),
                          name="row_mean")
    square = tvf.te.compute((x.shape[0],), lambda i: tvf.te.sum(x[i, k2] * x[i, k2] / n, axis=k2),
                            name="row_square")
    return mean, square


@tvf.op
def row_moments_wrong_grad(x, scale=1.0):
    return row_moments.te_forward(x, scale=scale)


@row_moments_wrong_grad.grad
def _(dys, x, scale=1.0):  # forgets the factor 2 of the squares' gradient
    d_mean, d_square = dys
    n = float(int(x.shape[1]))
    return [tvf.te.compute(x.shape, lambda i, j: d_mean[i] * (scale / n) + d_square[i] * x[i, j] / n,
                           name="wrong")]


def test_several_outputs_derived_gradient_matches_finite_differences():
    x = np.random.default_rng(0).standard_normal((3, 5))
    assert tvf.gradcheck(row_moments, [x], scale=2.0)
    mean, square = row_moments.eager(x, scale=2.0)
    np.testing.assert_allclose(mean, 2.0 * x.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(square, (x * x).mean(axis=1), rtol=1e-6)
    # the derived gradient, by hand: d/dx [<a, 2 mean> + <b, mean(x^2)>] = (2a + 2 b x) / n
    a, b = np.ones(3), np.arange(3.0)
    (dx,) = row_moments.vjp([a, b], x, scale=2.0)
    np.testing.assert_allclose(dx, (2.0 * a[:, None] + 2.0 * b[:, None] * x) / 5, rtol=1e-6)


def test_several_outputs_wrong_explicit_gradient_is_caught():
    x = np.random.default_rng(1).standard_normal((2, 4))
    assert tvf.gradcheck(row_moments_wrong_grad, [x], derived=True)  # the derived one is right
    with pytest.raises(tvf.GradientError, match="row_moments_wrong_grad.*input 0 at index"):
        tvf.gradcheck(row_moments_wrong_grad, [x])
    with pytest.raises(tvf.ShapeError, match="2 outputs: pass a list of 2 output gradients"):
        row_moments.vjp(np.ones(2), x)
    with pytest.raises(tvf.ShapeError, match="2 outputs, got 1 output gradients"):
        row_moments.vjp([np.ones(2)], x)


def test_opcheck_sweeps_an_op_with_several_outputs():
    report = tvf.opcheck(row_moments, shapes=[((3, 5),), ((1, 7),)], scale=2.0)
    assert len(report.rows) == 2 and all(r.ok for r in report.rows)
    with pytest.raises(tvf.OpCheckError, match="derived vs explicit.*FAIL|FAIL.*derived vs"):
        tvf.opcheck(row_moments_wrong_grad, shapes=[((3, 5),)])


# ---- the eager kernel cache tells explicit from derived ----------------------------------------

def test_derived_gradients_mode_is_part_of_the_kernel_key():
    x = np.random.default_rng(2).standard_normal((3, 4))
    dy = np.random.default_rng(3).standard_normal((3, 4))
    (explicit,) = cube.vjp(dy, x)  # cube's explicit gradient is wrong: 2 x^2, cached now
    np.testing.assert_allclose(explicit, 2 * x * x * dy)
    with tvf.derived_gradients():
        (derived,) = cube.vjp(dy, x)  # was the cached explicit gradient
        np.testing.assert_allclose(derived, 3 * x * x * dy)
        assert tvf.gradcheck(cube, [x])  # checks the derived gradient, which is right
        with pytest.raises(tvf.GradientError, match="'cube'"):
            tvf.gradcheck(cube, [x], derived=False)
        with pytest.raises(tvf.OpCheckError, match="FAIL derived vs explicit"):
            tvf.opcheck(cube, ref=lambda x: x ** 3, shapes=[[(3, 4)]])
    np.testing.assert_allclose(cube.vjp(dy, x)[0], explicit)


# ---- keywords -----------------------------------------------------------------------------------

def test_unknown_keyword_is_a_type_error_naming_it():
    x = np.ones((2, 3))
    with pytest.raises(TypeError, match=r"opcheck: unknown keyword inputs= for op 'swish' "
                                        r"\(its attributes: beta=; opcheck's own keywords: shapes=, "
                                        r"ref="):
        tvf.opcheck(swish, ref=swish_ref, inputs=[x])
    with pytest.raises(TypeError, match="unknown keyword inputs="):
        tvf.opcheck(swish, swish_ref, inputs=[x])  # the call the issue reports
    with pytest.raises(TypeError, match="shapes= is a function.*pass the numpy reference as ref="):
        tvf.opcheck(swish, swish_ref)
    with pytest.raises(TypeError, match=r"gradcheck: unknown keywords betta=, tol= .*beta="):
        tvf.gradcheck(swish, [x], betta=2.0, tol=1e-3)
    with pytest.raises(TypeError, match=r"unknown keyword scale= for op 'cube' \(its attributes: "
                                        r"none\)"):
        cube(x, scale=2.0)
    with pytest.raises(TypeError, match="unknown keyword x= for op 'swish'"):
        swish.vjp(x, x, x=x)  # a tensor input is not an attribute


def test_unhashable_attribute_is_a_type_error_naming_it():
    x = np.ones((2, 3))
    with pytest.raises(TypeError, match=r"op 'swish': attribute beta= is a ndarray, which cannot "
                                        "be a static attribute"):
        swish(x, beta=np.ones(3))
    with pytest.raises(TypeError, match="attribute beta= is a ndarray"):
        tvf.opcheck(swish, ref=swish_ref, beta=np.ones(3))
    np.testing.assert_allclose(swish(x, beta=[2.0][0]), swish_ref(x, 2.0), rtol=1e-6)
