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
