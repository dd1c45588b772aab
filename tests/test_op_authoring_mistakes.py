"""An op author's mistakes and shortcuts (the twenty-third session's sweep of the op DSL):
each either works as PyTorch's autograd.Function or JAX would have it, or is an error that
names the op, never a kernel reading uninitialised memory or a check that passes blind."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import nn
from tvmfront._tvm import tvm
from tvmfront.errors import GradientError
from tvmfront.opcheck import OpCheckError

te = tvf.te


def _model(op):
    """Linear -> op -> Linear, so that the op's gradient is on the weights' path."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(op(self.a(x)))
    tvf.manual_seed(0)
    return Net()


def _sign_ste():
    """A straight-through sign: forward sign(x), gradient dy returned as it is."""
    @tvf.op
    def sign_ste(x):
        return te.compute(x.shape, lambda *i: te.if_then_else(x(*i) >= 0, 1.0, -1.0),
                          name="sign_ste")

    @sign_ste.grad
    def _(dy, x):
        return [dy]
    return sign_ste


def test_a_gradient_returning_dy_as_it_is_trains_as_the_identity_gradient():
    """A straight-through estimator returns dy itself; the kernel's output was its input and
    the compiled step updated from uninitialised memory (weights off by up to 8e5)."""
    ste = _sign_ste()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype("float32")
    np.testing.assert_array_equal(ste.vjp(np.arange(20.0).reshape(5, 4), x)[0],
                                  np.arange(20.0).reshape(5, 4))
    y = np.array([0, 1, 1, 0, 1])
    model = _model(ste)
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.5),
                                  inputs=(5, 4), labels=(5,))
    w0 = {k: v.copy() for k, v in module.state_dict().items()}
    module.step(x, y)
    # numpy: the same step, sign in the forward and the identity in its gradient
    a_w, a_b, b_w, b_b = (w0[k] for k in ("a.weight", "a.bias", "b.weight", "b.bias"))
    h = x @ a_w.T + a_b
    s = np.where(h >= 0, 1.0, -1.0)
    logits = s @ b_w.T + b_b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = (p - np.eye(2)[y]) / 5
    dh = d @ b_w  # the straight-through gradient
    np.testing.assert_allclose(module.state_dict()["a.weight"], a_w - 0.5 * dh.T @ x,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(module.state_dict()["b.weight"], b_w - 0.5 * d.T @ s,
                               rtol=1e-5, atol=1e-6)


def test_an_identity_forward_and_an_output_returned_twice_are_copies():
    ident = tvf.op(lambda x: x)
    twice = tvf.op(lambda x: [te.compute(x.shape, lambda *i: x(*i) * 2)] * 2)
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(ident(x), x)
    a, b = twice(x)
    np.testing.assert_array_equal(a, 2 * x)
    np.testing.assert_array_equal(b, 2 * x)
    model = _model(ident)
    module = tvf.compile_inference(model, inputs=(2, 4))
    x4 = np.random.default_rng(1).standard_normal((2, 4)).astype("float32")
    p = model.state_dict()
    want = (x4 @ p["a.weight"].T + p["a.bias"]) @ p["b.weight"].T + p["b.bias"]
    np.testing.assert_allclose(module.predict(x4), want, rtol=1e-5, atol=1e-6)


def test_placeholders_that_are_no_input_are_named():
    w = te.placeholder((3,), "float32", name="w")
    returns = tvf.op(lambda x: w, name="returns_w")
    reads = tvf.op(lambda x: te.compute(x.shape, lambda i: x[i] + w[i]), name="reads_w")
    with pytest.raises(TypeError, match="op 'returns_w': its forward returns the placeholder "
                                        "'w', which is none of its inputs"):
        returns(np.zeros(3, "float32"))
    with pytest.raises(TypeError, match="op 'reads_w': its forward reads the placeholder 'w'"):
        reads(np.zeros(3, "float32"))


def test_a_reduction_over_an_empty_axis_is_refused_not_left_unwritten():
    @tvf.op
    def rowsum(x):
        k = te.reduce_axis((0, x.shape[1]), "k")
        return te.compute((x.shape[0],), lambda i: te.sum(x[i, k], axis=k), name="rowsum")
    np.testing.assert_allclose(rowsum(np.ones((3, 2))), [2, 2, 2])
    with pytest.raises(ValueError, match="op 'rowsum': the reduction 'rowsum' runs over an "
                                         "axis of size 0"):
        rowsum(np.ones((3, 0)))


def test_an_op_called_inside_another_ops_forward_composes():
    @tvf.op
    def double_relu(x):
        return tvf.ops.relu(tvf.ops.mul_scalar(x, value=2.0))
    x = np.array([-1.0, 0.5, 2.0], "float32")
    np.testing.assert_allclose(double_relu(x), [0.0, 1.0, 4.0])
    assert tvf.gradcheck(double_relu, [np.array([-1.0, 0.5, 2.0])])


def test_attribute_values_equal_across_types_get_kernels_of_their_own():
    """1, 1.0 and True are equal and hash alike; the forward may branch on the type."""
    @tvf.op
    def fill_like(x, value=0):
        dtype = "int32" if isinstance(value, int) and not isinstance(value, bool) else x.dtype
        return te.compute(x.shape, lambda *i: tvm.tirx.const(value, dtype), name="fill")
    x = np.zeros(2, "float32")
    assert fill_like(x, value=1).dtype == np.int32
    assert fill_like(x, value=1.0).dtype == np.float32


def test_attribute_floats_are_keyed_by_their_bits():
    """-0.0 == 0.0: copysign(x, s=-0.0) got the kernel built for s=0.0."""
    @tvf.op
    def with_sign_of(x, s=1.0):
        return te.compute(x.shape, lambda i: tvm.tirx.copysign(x[i], tvm.tirx.const(s, x.dtype)),
                          name="with_sign_of")
    x = np.array([1.0, 2.0])
    np.testing.assert_array_equal(with_sign_of(x, s=0.0), [1.0, 2.0])
    np.testing.assert_array_equal(with_sign_of(x, s=-0.0), [-1.0, -2.0])
    np.testing.assert_array_equal(with_sign_of(x, s=np.float32(-0.0)), [-1.0, -2.0])


@pytest.mark.parametrize("reducer", [
    lambda: te.comm_reducer(lambda a, b: a + b * b, lambda t: tvm.tirx.const(0, t)),  # sum x^2
    lambda: te.comm_reducer(lambda a, b: te.max(a, b), lambda t: tvm.tirx.const(0, t)),  # from 0
    lambda: te.comm_reducer(lambda a, b: te.min(a, b), lambda t: tvm.tirx.const(1, t)),
])
def test_a_reducer_other_than_sum_max_min_is_refused_not_misread(reducer):
    """The combiner's node type alone was read: a + b * b was differentiated as a sum
    (gradient 1 where it is 2x) and a max starting from 0 as a plain max."""
    reduce = reducer()

    @tvf.op
    def reduced(x):
        k = te.reduce_axis((0, x.shape[1]), name="k")
        return te.compute((x.shape[0],), lambda i: reduce(x[i, k], axis=k), name="reduced")
    with pytest.raises(GradientError, match="a reduction with combiner .*te.sum, te.max and "
                                            "te.min only"):
        reduced.vjp(np.ones(2), -np.ones((2, 3)))


@pytest.mark.parametrize("form, closed", [
    (lambda x: tvm.tirx.hypot(tvm.tirx.const(2.0, "float64"), x), lambda x: x / np.hypot(2, x)),
    (lambda x: tvm.tirx.atan2(tvm.tirx.const(1.0, "float64"), x), lambda x: -1 / (1 + x * x)),
    (lambda x: tvm.tirx.atan2(x, tvm.tirx.const(2.0, "float64")), lambda x: 2 / (4 + x * x)),
    (lambda x: tvm.tirx.hypot(x, x * 3), lambda x: np.sign(x) * np.sqrt(10.0)),
    (lambda x: te.fmod(x * 3.0, tvm.tirx.const(1.25, "float64")), lambda x: 3.0 + 0 * x),
    (lambda x: te.fmod(tvm.tirx.const(5.0, "float64"), x), lambda x: -np.trunc(5.0 / x)),
])
def test_two_argument_intrinsics_differentiate_through_either_argument(form, closed):
    """Only the first argument was differentiated: atan2(1, x) and hypot(2, x) had a zero
    gradient, in eager and compiled steps alike."""
    @tvf.op
    def two_args(x):
        return te.compute(x.shape, lambda i: form(x[i]), name="two_args")
    x = np.array([-1.5, -0.3, 0.7, 2.0])  # (none where fmod(5, x) jumps: 5 / x whole)
    np.testing.assert_allclose(two_args.vjp(np.ones(4), x)[0], closed(x), rtol=1e-12)
    assert tvf.gradcheck(two_args, [x])


def _zero(dtype="float64"):
    return tvm.tirx.const(0.0, dtype)


@pytest.mark.parametrize("form, live", [
    (lambda v: te.sqrt(te.max(v, _zero())), lambda x: x > 0),
    (lambda v: te.power(te.max(v, _zero()), tvm.tirx.const(0.5, "float64")), lambda x: x > 0),
    (lambda v: te.sqrt(te.if_then_else(v > 0, v, _zero())), lambda x: x > 0),
    (lambda v: te.sqrt(te.min(v, _zero()) * -1.0), lambda x: x < 0),
    (lambda v: te.max(v, _zero()) / te.sqrt(te.max(v, _zero())), lambda x: x > 0),
], ids=["sqrt-max", "pow-max", "sqrt-select", "sqrt-min-scaled", "quotient"])
def test_a_masked_derivative_is_zero_where_its_mask_is_off(form, live):
    """sqrt(max(x, 0)) had the gradient 0 * (0.5 / sqrt(0)) = NaN at every x < 0, where
    PyTorch's where(mask, grad, 0) gives 0: the outer factor now goes inside the select."""
    @tvf.op
    def masked(x):
        return te.compute(x.shape, lambda *i: form(x(*i)), name="masked")
    x = np.array([-1.0, -0.3, 0.4, 1.2])
    grad = masked.vjp(np.ones(4), x)[0]
    np.testing.assert_array_equal(grad[~live(x)], 0.0)
    assert np.isfinite(grad).all() and (grad[live(x)] != 0).all(), grad


def test_a_masked_derivative_trains_without_nan():
    """The compiled step's parameters were NaN after one step through sqrt(max(x, 0))."""
    @tvf.op
    def sqrt_relu(x):
        return te.compute(x.shape, lambda *i: te.sqrt(te.max(x(*i), _zero(x.dtype))),
                          name="sqrt_relu")
    with tvf.derived_gradients():
        module = tvf.compile_training(_model(sqrt_relu), nn.CrossEntropyLoss(),
                                      tvf.optim.SGD(0.1), inputs=(8, 4), labels=(8,))
    x = np.random.default_rng(3).standard_normal((8, 4)).astype("float32")
    before = module.state_dict()["a.weight"].copy()
    module.step(x, np.arange(8) % 2)
    after = module.state_dict()["a.weight"]
    assert np.isfinite(after).all() and not np.array_equal(after, before)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fmod_builds_and_computes_cs_fmod(dtype):
    """te.fmod had no CPU lowering in TVM 0.27: 'unknown intrinsic tirx.fmod' at the build."""
    @tvf.op
    def remainder(x, y):
        return te.compute(x.shape, lambda i: te.fmod(x[i], y[i]), name="remainder")
    x = np.array([-4.0, -1.6, 0.3, 2.9, 1e7, 7.0], dtype)
    y = np.array([1.5, 1.5, -0.7, -1.2, 3.1, 7.0], dtype)
    np.testing.assert_array_equal(remainder(x, y), np.fmod(x, y))

    class Model(nn.Module):
        def forward(self, x):
            return remainder(x, x * 0.0 + 1.5)
    module = tvf.compile_inference(Model(), inputs=(6,))
    x = x.astype("float32")
    np.testing.assert_allclose(np.asarray(module(x)), np.fmod(x, np.float32(1.5)), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "float16"])
def test_fmod_of_integers_and_float16_computes_numpys_fmod(dtype):
    """Only float32 and float64 had a lowering: TVM's 'unknown intrinsic tirx.fmod' for the
    rest. An integer divisor of 0 gives 0, as numpy's fmod (C's remainder would trap)."""
    @tvf.op
    def remainder(x, y):
        return te.compute(x.shape, lambda i: te.fmod(x[i], y[i]), name="remainder")
    signed = not dtype.startswith("u")
    x = np.array([7, -7, 9, 0, 5, -6] if signed else [7, 8, 9, 0, 5, 6], dtype)
    y = np.array([3, 3, -4, 2, 0, 4] if signed else [3, 3, 4, 2, 0, 4], dtype)
    if dtype == "float16":
        y[4] = 2  # (a float's fmod by 0 is NaN in both)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.fmod(x, y)
    np.testing.assert_array_equal(remainder(x, y), want)


def test_an_intrinsic_without_a_rule_is_refused_through_any_argument():
    @tvf.op
    def sign_from(x):
        return te.compute(x.shape, lambda i: tvm.tirx.copysign(
            tvm.tirx.const(2.0, "float64"), x[i]), name="sign_from")
    with pytest.raises(GradientError, match="no derivative rule for intrinsic tirx.copysign .*"
                                            "argument"):
        sign_from.vjp(np.ones(2), np.array([-1.0, 1.0]))


def test_a_derived_gradient_through_an_extern_stage_is_refused():
    """Its path was dropped: (2x via te.extern) * x got the gradient 2x, not 4x."""
    @tvf.op
    def doubled_times(x):
        def double(ins, outs):
            i = tvm.tirx.Var("i", "int32")
            return tvm.tirx.For(i, 0, ins[0].shape[0], tvm.tirx.ForKind.SERIAL, tvm.tirx.BufferStore(
                outs[0], tvm.tirx.BufferLoad(ins[0], [i]) * tvm.tirx.const(2.0, "float64"), [i]))
        doubled = te.extern(x.shape, [x], double, name="doubled", dtype="float64")
        return te.compute(x.shape, lambda i: doubled[i] * x[i], name="doubled_times")
    x = np.array([0.5, -1.0])
    np.testing.assert_array_equal(doubled_times(x), 2 * x * x)
    with pytest.raises(GradientError, match="stage 'doubled' is no te.compute"):
        doubled_times.vjp(np.ones(2), x)


def test_a_wrap_around_read_is_refused_not_a_zero_gradient():
    """x[(i + 1) % 4]: TVM's iter-map detection dropped the offset, and every element's
    gradient came out 0 (a compiled step never moved the parameter)."""
    @tvf.op
    def rotated(x):
        return te.compute((4,), lambda i: x[(i + 1) % 4], name="rotated")
    np.testing.assert_array_equal(rotated(np.arange(4.0)), [1.0, 2.0, 3.0, 0.0])
    with pytest.raises(GradientError, match=r"index \[\(\(i \+ 1\) % 4\)\]: its inverse could "
                                            r"not be verified"):
        rotated.vjp(np.ones(4), np.arange(4.0))


def test_a_derived_gradient_through_a_floats_bits_is_refused():
    @tvf.op
    def bit_abs(x):
        return te.compute(x.shape, lambda i: tvm.tirx.reinterpret(
            "float32", tvm.tirx.reinterpret("int32", x[i]) & 0x7FFFFFFF), name="bit_abs")
    x = np.array([-2.0, 3.0], "float32")
    np.testing.assert_array_equal(bit_abs(x), [2.0, 3.0])
    with pytest.raises(GradientError, match="reinterpret"):
        bit_abs.vjp(np.ones(2, "float32"), x)


def _cube(wrong=False):
    @tvf.op
    def cube(x):
        return te.compute(x.shape, lambda *i: x(*i) * x(*i) * x(*i), name="cube")

    @cube.grad
    def _(dy, x):
        k = 2.0 if wrong else 3.0
        return [te.compute(x.shape, lambda *i: k * x(*i) * x(*i) * dy(*i))]
    return cube


def test_gradcheck_fails_on_nan_and_refuses_what_it_cannot_check():
    good, bad = _cube(), _cube(wrong=True)
    x = np.random.default_rng(0).standard_normal((2, 3))
    assert tvf.gradcheck(good, [x])
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="input 0 of op 'cube' holds non-finite values"):
        tvf.gradcheck(bad, [x])  # was True: err.max() was NaN, and NaN > 0 is False

    @tvf.op
    def nan_at_one(x):  # NaN at one output element: no finite difference there either
        return te.compute(x.shape, lambda i: te.if_then_else(
            i == 1, x[i] * tvm.tirx.const(float("nan"), x.dtype), x[i] * x[i]), name="nan1")

    @nan_at_one.grad
    def _(dy, x):
        return [te.compute(x.shape, lambda i: 2 * x[i] * dy[i])]
    with pytest.raises(GradientError, match="finite difference nan"):
        tvf.gradcheck(nan_at_one, [np.array([1.0, 2.0, 3.0])])
    with pytest.raises(GradientError, match="no floating-point input"):
        tvf.gradcheck(bad, [np.array([[1, 2], [3, 4]])])
    for kw in ({"eps": 0.0}, {"atol": float("nan")}, {"rtol": -1.0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            tvf.gradcheck(good, [np.ones(3)], **kw)
    with pytest.raises(TypeError, match="a list with one array per input"):
        tvf.gradcheck(good, np.ones(3))
    with pytest.raises(TypeError, match="must be a tvf.op"):
        tvf.gradcheck(np.tanh, [np.ones(3)])


def test_opcheck_reports_nan_mismatches_as_failures():
    @tvf.op
    def nan_at_one(x):
        return te.compute(x.shape, lambda i, j: te.if_then_else(
            te.all(i == 0, j == 1), tvm.tirx.const(float("nan"), x.dtype), x[i, j] * 3),
            name="nan_at_one")
    with pytest.raises(OpCheckError, match="forward at \\(0, 1\\): got nan"):
        tvf.opcheck(nan_at_one, shapes=[[(2, 3)]], ref=lambda x: x * 3, dtypes="float32")


def test_opcheck_skips_the_derived_rows_of_an_op_whose_gradient_must_be_explicit():
    report = tvf.opcheck(tvf.ops.take, shapes=[[(5, 3), (4,)]], int_inputs={1: 5},
                         ref=lambda t, i: t[i], dtypes=("float64",))
    assert report.ok
    assert any(r.check == "derived grad" and r.detail.startswith("skipped") for r in report.rows)


def test_opcheck_validates_its_own_arguments():
    with pytest.raises(TypeError, match="shapes= is a list of cases"):
        tvf.opcheck(_cube(), shapes=[(3, 4)])
    with pytest.raises(ValueError, match="dtypes= is empty"):
        tvf.opcheck(_cube(), dtypes=())
    with pytest.raises(ValueError, match="int_inputs= names input 3"):
        tvf.opcheck(_cube(), int_inputs={3: 5})


def test_compile_training_honours_the_derived_gradients_block():
    """Inside `with tvf.derived_gradients():` compile_training's default (None) took the
    environment's setting and compiled the explicit gradient."""
    bad = _cube(wrong=True)  # its explicit gradient is wrong: only the derived one trains right
    x = np.random.default_rng(2).standard_normal((5, 4)).astype("float32")
    y = np.array([0, 1, 1, 0, 1])
    steps = {}
    for derived in (True, False):
        with tvf.derived_gradients(derived):
            module = tvf.compile_training(_model(bad), nn.CrossEntropyLoss(),
                                          tvf.optim.SGD(0.5), inputs=(5, 4), labels=(5,))
        module.step(x, y)
        steps[derived] = module.state_dict()["a.weight"]
    with tvf.derived_gradients():
        module = tvf.compile_training(_model(_cube()), nn.CrossEntropyLoss(),
                                      tvf.optim.SGD(0.5), inputs=(5, 4), labels=(5,))
    module.step(x, y)
    np.testing.assert_allclose(steps[True], module.state_dict()["a.weight"], rtol=1e-5)
    assert not np.allclose(steps[False], module.state_dict()["a.weight"], rtol=1e-3)


def test_an_op_and_its_gradient_must_be_functions():
    with pytest.raises(TypeError, match="tvf.op takes a function"):
        tvf.op(3)
    with pytest.raises(TypeError, match="op 'cube': .grad takes a function"):
        _cube().grad(3)
    bad = tvf.op(lambda x: te.compute(x.shape, lambda i: x[i] * 2), name="twice")
    bad.grad(lambda dy, x: np.ones(3))
    with pytest.raises(GradientError, match="gradient of op 'twice' must return a list"):
        bad.vjp(np.ones(3, "float32"), np.ones(3, "float32"))
    bad.grad(lambda dy, x: [np.ones(3)])
    with pytest.raises(GradientError, match="for input 0 is a ndarray, not a TE tensor"):
        bad.vjp(np.ones(3, "float32"), np.ones(3, "float32"))


def test_opcheck_compares_each_output_of_an_op_with_several():
    @tvf.op
    def sum_and_double(x):  # outputs of two shapes: a tuple ref could not be compared
        k = te.reduce_axis((0, x.shape[1]), "k")
        return [te.compute((x.shape[0],), lambda i: te.sum(x[i, k], axis=k), name="rows"),
                te.compute(x.shape, lambda i, j: x[i, j] * 2, name="double")]
    report = tvf.opcheck(sum_and_double, shapes=[[(3, 4)]], dtypes="float32",
                         ref=lambda x: (x.sum(1), 2 * x))
    assert report.ok
    with pytest.raises(OpCheckError, match="forward output 1 at"):
        tvf.opcheck(sum_and_double, shapes=[[(3, 4)]], dtypes="float32",
                    ref=lambda x: (x.sum(1), 3 * x))


def test_attributes_named_as_the_checkers_keywords_go_in_attrs():
    """layer_norm's eps: gradcheck(op, x, eps=1e-5) is gradcheck's step; attrs= is the op's."""
    @tvf.op
    def shift(x, eps=0.0, seed=0):
        return te.compute(x.shape, lambda i: x[i] * x[i] + eps + seed, name="shift")
    x = np.array([1.0, 2.0])
    assert tvf.gradcheck(shift, [x], attrs={"eps": 0.5, "seed": 3})
    report = tvf.opcheck(shift, shapes=[[(3,)]], dtypes="float64", attrs={"eps": 0.5, "seed": 3},
                         ref=lambda x, eps, seed: x * x + eps + seed)
    assert report.ok
    with pytest.raises(OpCheckError, match="forward at"):  # the attribute reached the op
        tvf.opcheck(shift, shapes=[[(3,)]], dtypes="float64", attrs={"eps": 0.5},
                    ref=lambda x, eps: x * x)



def test_an_attribute_may_not_take_a_name_vjp_and_te_grad_use():
    """vjp's and te_grad's own `derived=` had taken an op's attribute of that name."""
    with pytest.raises(TypeError, match="op 'scaled': derived cannot name an attribute"):
        @tvf.op
        def scaled(x, derived=2.0):
            return te.compute(x.shape, lambda i: x[i] * derived, name="scaled")
    with pytest.raises(TypeError, match="forward_output cannot name an attribute"):
        tvf.op(lambda x, forward_output=None: x)


def test_an_attribute_passed_positionally_as_a_tuple_is_named_not_hung():
    """reshape(x, (-1, 32)) made the tuple a tensor input; iterating that TE tensor as a shape
    never ended, and compile_inference hung."""
    x = np.zeros((2, 2, 4, 4), "float32")
    with pytest.raises(TypeError, match=r"op 'reshape': shape is an attribute; pass it by "
                                        r"keyword \(shape=\(-1, 32\)\)"):
        tvf.ops.reshape(x, (-1, 32))
    assert tvf.ops.reshape(x, shape=(-1, 32)).shape == (2, 32)


@pytest.mark.parametrize("forward, inputs, error, match", [
    (lambda x: te.compute(x.shape, lambda i: x[i * 0.5], name="f"), [np.arange(4.0)],
     TypeError, r"stage 'f' indexes 'x' with the float32 index \(float32\(i\) \* 0.5\)"),
    (lambda x: te.compute((-1,), lambda i: x[i], name="f"), [np.arange(3.0)],
     ValueError, r"stage 'f' has a negative extent \(-1\)"),
    (lambda x: te.compute(x.shape, lambda i: x[i] * x[i], name="f"), [np.array([True, False])],
     TypeError, r"stage 'f' does arithmetic on bools, \(x\[i\] \* x\[i\]\)"),
    (lambda x, idx: te.compute(idx.shape, lambda i: x[i, idx[i]], name="f"),
     [np.ones((3, 4)), np.zeros(3)], TypeError, r"indexes 'x' with the float64 index idx\[i\]"),
])
def test_a_forward_te_cannot_build_is_named_before_tvm_fails(forward, inputs, error, match):
    """Each was a TVM InternalError from LLVM (a float index, bool arithmetic) or a
    std::bad_alloc (a negative extent) when the kernel was built."""
    with pytest.raises(error, match=match):
        tvf.op(forward)(*inputs)


def test_an_array_given_for_an_attribute_is_named():
    # masked_softmax(x, mask): the mask became axis=, and the forward failed on "'<=' not
    # supported between instances of 'int' and 'Tensor'"
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"op 'masked_softmax' takes axis= as an attribute "
                                        r"\(default -1\), not a tensor; its tensor inputs: x"):
        tvf.ops.masked_softmax(x, np.ones((2, 3), bool))
    assert tvf.ops.masked_softmax(x, axis=-1).shape == (2, 3)
