"""The batch-1 fast path of InferenceModule.__call__ / predict (an array of exactly the
compiled shape and dtype is copied into a reused device tensor, no other check) gives the
general path's answers and leaves every error to it."""

import numpy as np
import pytest

import tvmfront as tvf

nn = tvf.nn


@pytest.fixture(scope="module")
def module():
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return tvf.compile_inference(model, inputs=(2, 1, 2, 4), records=False)


def _reference(module, x):
    """The forward in numpy from the module's own parameters."""
    p = module.state_dict()
    names = list(p)
    h = x.reshape(len(x), -1).astype("float64")
    h = np.maximum(h @ p[names[0]].T + p[names[1]], 0)
    return h @ p[names[2]].T + p[names[3]]


def _x(seed):
    return np.random.default_rng(seed).standard_normal((2, 1, 2, 4)).astype("float32")


def test_fast_calls_give_each_input_its_own_answer(module):
    # the input tensor is reused: an earlier output must not change, a later call must see
    # its own input
    xs = [_x(s) for s in range(3)]
    outs = [module(x) for x in xs]
    for x, out in zip(xs, outs):
        np.testing.assert_allclose(out, _reference(module, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(module.predict(xs[1]), outs[1], rtol=1e-6)


def test_non_contiguous_and_reordered_arrays_are_right(module):
    x = _x(4)
    strided = np.zeros((2, 1, 2, 8), "float32")[..., ::2]
    strided[...] = x
    fortran = np.asfortranarray(x)
    assert not strided.flags.c_contiguous and not fortran.flags.c_contiguous
    want = _reference(module, x)
    for arr in (strided, fortran):
        np.testing.assert_allclose(module(arr), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(module.predict(arr), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((3, 1, 2, 4), "float32"), r"x: expected shape \(2, 1, 2, 4\) dtype float32, got "
                                        r"shape \(3, 1, 2, 4\)"),
    (np.zeros((2, 1, 2, 4), "float64"), r"x: expected shape .* dtype float32, got shape "
                                        r"\(2, 1, 2, 4\) dtype float64"),
    (np.zeros((2, 8), "float32"), r"x: expected shape \(2, 1, 2, 4\)"),
    ([[0.0] * 8] * 2, r"x: expected a numpy array, got list"),
])
def test_bad_inputs_still_raise_after_fast_calls(module, bad, message):
    module(_x(0))  # the fast path has run (its tensor exists) before the bad call
    with pytest.raises(tvf.ShapeError, match=message):
        module(bad)


def test_parameters_loaded_later_are_used(module):
    x = _x(5)
    before = module(x)
    state = module.state_dict()
    last = list(state)[-1]
    module.load_state_dict(dict(state, **{last: state[last] + 1.0}))
    try:
        np.testing.assert_allclose(module(x), before + 1.0, rtol=1e-5, atol=1e-5)
    finally:
        module.load_state_dict(state)
