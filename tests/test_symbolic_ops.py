"""Every op-spec row that can take a symbolic batch, compiled once with the batch symbolic
(tests/_symbolic_ops.py) and run at two batch sizes: the forward equals the eager (fixed-size)
kernel's and the numpy reference, the gradient Relax derives through the op's gradient equals
the eager vjp. Rows share one build (a compile is slow, a row only adds kernels): one row of
each kind (QUICK, ~1.5 min on 2 cores) and every 12th other row (~40 s);
TVMFRONT_SYMBOLIC_ALL=1 runs all of them (~7 min; 223 passed at the last change)."""

import os

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops, te
from tvmfront.errors import GradientError, ShapeError

import _symbolic_ops as sym
from op_specs import OP_SPECS, batch_axes

SEED = 4321


# Rows whose output length along the batch is not a multiple of it (B + 2, ceil(B / 2)):
# their gradient cannot be taken on a symbolic batch (see _symbolic_ops.differentiable_here).
NO_SYMBOLIC_GRADIENT = {"concat-axis0-default", "strided_slice-1:4:2",
                        "strided_slice-4::-2_-3:-1:", "strided_slice-::3_5:0:-3",
                        "strided_slice--1::"}


def _case(k, spec):
    xs = spec.inputs(np.random.default_rng(SEED))
    batch = batch_axes(spec, xs)
    if not batch:
        return None
    return sym.Case(f"c{k}", spec.op, spec.attrs, xs, batch,
                    spec.grad and spec.id not in NO_SYMBOLIC_GRADIENT)


CASES = {s.id: c for k, s in enumerate(OP_SPECS) if (c := _case(k, s)) is not None}
SPECS = {s.id: s for s in OP_SPECS}
# One row of each kind of op: broadcasting, GEMM, reshape with -1, reductions over the batch,
# softmax across the batch, losses, norms (BatchNorm's statistics over the batch), conv and
# pooling, gathers by symbolic ids, slices and joins, dropout's counter, causal masks.
QUICK = ["relu-3x4", "add-4x5-5", "dense-2x4-3x4", "reshape-shape=(4,-1)",
         "mean-axis(0,2)-keepdimsFalse", "max-axisNone-keepdimsTrue", "softmax-3d-axis0",
         "cross_entropy-int64", "layer_norm-last2", "batch_norm-3x2x3x2", "group_norm-g2",
         "conv2d-x2x2x5x5-w2x2x3x3-s3-p1", "max_pool2d-1x2x5x6-kernel3-stride2-padding1",
         "embedding-int64", "take-axis0-int32-2d-ids-repeated", "strided_slice-::-1_1::2",
         "concat-3-axis1", "stack-3-axis-1", "dropout-p0.3", "causal_fill-symbolic-length",
         "batch_matmul-4d", "transpose-120", "where-broadcast", "gelu-tanh-3x4"]


@pytest.fixture(scope="module")
def vm_quick():
    return sym.build([CASES[i] for i in QUICK])


OTHERS = [i for i in CASES if i not in QUICK]
if not os.environ.get("TVMFRONT_SYMBOLIC_ALL"):
    OTHERS = OTHERS[::12]


@pytest.fixture(scope="module")
def vm_others():
    return sym.build([CASES[i] for i in OTHERS])


@pytest.mark.parametrize("spec_id", sorted(NO_SYMBOLIC_GRADIENT))
def test_rows_without_a_symbolic_gradient_are_the_ones_that_cannot_have_one(spec_id):
    spec = SPECS[spec_id]
    case = _case(0, spec)
    case.grad = True
    assert sym.differentiable_here(case) is not None, f"{spec_id} can be differentiated now"


def _sizes(case):
    n = next(case.xs[i].shape[a] for i, axes in case.batch.items() for a in axes)
    return (n, n + 2)


def test_most_rows_run_symbolically():
    """Rows left out are the ones whose batch cannot be symbolic (see op_specs.batch_axes)."""
    assert len(CASES) >= 0.85 * len(OP_SPECS), (len(CASES), len(OP_SPECS))
    ops_run = {c.op.name for c in CASES.values()}
    missing = {s.op.name for s in OP_SPECS} - ops_run - {"random_bits", "uniform"}
    assert not missing, f"ops with no symbolic row: {sorted(missing)}"


@pytest.mark.slow
@pytest.mark.parametrize("spec_id", QUICK)
def test_symbolic_batch_matches_fixed(vm_quick, spec_id):
    _check(vm_quick, spec_id)


@pytest.mark.slow
@pytest.mark.parametrize("spec_id", OTHERS)
def test_other_rows_with_a_symbolic_batch_match_fixed(vm_others, spec_id):
    _check(vm_others, spec_id)


def _check(vm, spec_id):
    case, spec = CASES[spec_id], SPECS[spec_id]
    rng = np.random.default_rng(SEED + 1)
    for n in _sizes(case):
        xs = sym.resized(case.xs, case.batch, n, rng)
        got = sym.forward(vm, case, xs)
        eager = spec.op.eager(*xs, **spec.attrs)
        assert got.shape == eager.shape and got.dtype == eager.dtype, (n, got.shape, eager.shape)
        np.testing.assert_allclose(got, eager, rtol=1e-12, atol=1e-12, err_msg=f"batch {n}")
        np.testing.assert_allclose(got, np.asarray(spec.ref(*[x.copy() for x in xs],
                                                             **spec.attrs)),
                                   rtol=1e-10, atol=1e-12, err_msg=f"batch {n} vs numpy")
        if case.grad:
            for g, want in zip(sym.gradients(vm, case, xs), sym.eager_gradients(case, xs)):
                np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12,
                                           err_msg=f"gradient at batch {n}")


# ---- what cannot be symbolic is a clear error, naming the op ---------------------------------
@pytest.mark.parametrize("fn, specs, match", [
    (lambda x, w: ops.conv2d(x, w), [(("b", 3, "h", 8), "float32"), ((4, 3, 3, 3), "float32")],
     "conv2d: x's channels, height and width must be a fixed size, got the symbolic h"),
    (lambda x: ops.max_pool2d(x), [(("b", 3, 8, "w"), "float32")],
     "max_pool2d: the input width must be a fixed size, got the symbolic w"),
    (lambda x, g, b: ops.layer_norm(x, g, b),
     [(("b", "d"), "float32"), (("d",), "float32"), (("d",), "float32")],
     "layer_norm: normalized_shape must be a fixed size, got the symbolic d"),
    (lambda x: ops.reshape(x, shape=(4, -1)), [(("b", 6), "float32")],
     r"reshape: cannot view \['b', 6\] as \[4, -1\]"),
    (lambda x: ops.reshape(x, shape=(3, 4)), [(("b", 6), "float32")],
     r"reshape: cannot view \['b', 6\] \(b \* 6 elements\) as \[3, 4\]"),
    (lambda x: ops.split(x, 2), [(("b", 3), "float32")],
     "split: the axis split must be a fixed size, got the symbolic b"),
    (lambda x: ops.embedding(x, np.zeros(3, "int64")), [(("n", 4), "float32")],
     "embedding: the number of rows must be a fixed size, got the symbolic n"),
])
def test_fixed_sizes_stay_fixed(fn, specs, match):
    with pytest.raises(ShapeError, match=match):
        sym.trace(fn, specs)


def test_reshape_and_flatten_keep_symbolic_factors():
    assert sym.trace(ops.flatten, [(("batch", 2, 3, 4), "float32")]) == [["batch", 24]]

    def there_and_back(x):  # [b, t, 4] -> [b * t, 4] -> [b, t, 4]
        flat = ops.reshape(x, shape=(-1, 4))
        return flat, ops.reshape(flat, shape=(x.shape[0], x.shape[1], -1))

    assert sym.trace(there_and_back, [(("batch", "seq", 4), "float32")]) == \
        [["batch * seq", 4], ["batch", "seq", 4]]
    assert sym.trace(lambda x: ops.reshape(x, shape=(2, -1)), [(("batch", 6), "float32")]) == \
        [[2, "batch * 3"]]


def test_slices_and_concat_of_a_symbolic_axis():
    x = [(("batch", 6), "float32")]
    assert sym.trace(lambda x: x[-1], x) == [[6]]
    assert sym.trace(lambda x: ops.concat(x, x), x) == [["batch * 2", 6]]


def test_an_op_without_a_gradient_on_a_symbolic_shape_is_a_clear_error():
    @tvf.op
    def cube(x):
        return te.compute(x.shape, lambda *i: x(*i) * x(*i) * x(*i), name="cube")

    case = sym.Case("cube", cube, {}, [np.ones((2, 3))], {0: (0,)}, True)
    with pytest.raises(GradientError, match=r"cannot derive the gradient of op 'cube' on a "
                                            r"symbolic shape \(\['batch', 3\]\).*@cube.grad"):
        sym.differentiable_here(case)
