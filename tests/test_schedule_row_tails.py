"""Row reductions and row-wise stages over rows whose length no vector width divides (the char
Transformer's vocabulary of 103) are vector partial results over the whole vectors of each
row and a short scalar tail (schedule/reductions._lane_reduction_tail), not the scalar tile of
8 rows. The values are numpy's on odd widths, narrower ones than a vector
included, with -inf and large values in the rows, float32 and float64, AVX-512 and AVX2."""

import numpy as np
import pytest

from tvmfront import ops
from tvmfront import schedule as cpu_schedule
from tvmfront._tvm import te

from _scheduled import run, schedule

ROWS = 48
WIDTHS = [5, 7, 17, 100, 103, 127, 130]
TARGETS = ["x86", "x86:avx2"]
DTYPES = ["float32", "float64"]
RTOL = {"float32": 2e-5, "float64": 1e-12}


def _over_odd_rows(test):
    """The test for every width, dtype and target."""
    for name, values in (("target", TARGETS), ("dtype", DTYPES), ("width", WIDTHS)):
        test = pytest.mark.parametrize(name, values)(test)
    return test


def _lanes(target, dtype):
    from tvmfront.target import resolve_target
    return cpu_schedule.CpuParams(resolve_target(target)).lanes(dtype)


def _tailed(width, lanes):
    """Whether a row of `width` takes a vector bulk and a tail (a whole vector, and a tail)."""
    return width >= lanes and width % lanes != 0


def _rows(width, dtype, seed, extremes=True):
    """Random rows with, where `extremes`, -inf in the tail and in the bulk of some rows and
    a large value in others (each row keeps a finite maximum)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((ROWS, width)) * 3
    if extremes:
        a[1, -1] = -np.inf  # the last element: in the tail
        a[2, 0] = -np.inf  # in the bulk
        a[3, :] = -np.inf
        a[3, width // 2] = 1.5  # one finite value, anywhere in the row
        a[4, -1] = 1e30  # the maximum in the tail
        a[5, 0] = -1e30
        a[6, width // 3] = 60.0  # far above the rest: exp(x - max) underflows elsewhere
    return a.astype(dtype)


@_over_odd_rows
@pytest.mark.parametrize("reducer", ["max", "sum"])
def test_row_max_and_sum_over_odd_widths(reducer, width, dtype, target):
    x = te.placeholder((ROWS, width), dtype, name="x")
    r = te.reduce_axis((0, width), "r")
    fn = te.max if reducer == "max" else te.sum
    out = te.compute((ROWS,), lambda i: fn(x[i, r], axis=r), name="rowred")
    func, rule, tgt = schedule([x], out, target)
    lanes = _lanes(target, dtype)
    if _tailed(width, lanes):
        assert "rowred=tiled[lanes v" in rule and "tail " in rule, rule
    a = _rows(width, dtype, width, extremes=reducer == "max")
    if reducer == "sum":
        a[1, -1] = -np.inf  # an infinite sum, from the tail
        a[4, -1] = 1e30
    got, = run(func, tgt, [a], [(ROWS,)], dtype)
    if reducer == "max":
        np.testing.assert_array_equal(got, a.max(axis=1))
    else:
        np.testing.assert_allclose(got, a.astype("float64").sum(axis=1), rtol=RTOL[dtype],
                                   atol=1e-4 if dtype == "float32" else 1e-12)


def _softmax(a):
    a = a.astype("float64")
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _log_softmax(a):
    a = a.astype("float64")
    m = a.max(-1, keepdims=True)
    return a - m - np.log(np.exp(a - m).sum(-1, keepdims=True))


def _check(got, want, dtype):
    finite = np.isfinite(want)
    assert np.array_equal(np.isfinite(got), finite)
    np.testing.assert_array_equal(got[~finite], want[~finite])
    np.testing.assert_allclose(got[finite], want[finite], rtol=RTOL[dtype],
                               atol=1e-6 if dtype == "float32" else 1e-13)


def _kernel(which, x, dy):
    """(inputs, output) of a softmax-family kernel over x's rows."""
    if which == "softmax":
        return [x], ops.softmax.te_forward(x, axis=-1)
    if which == "log_softmax":
        return [x], ops.log_softmax.te_forward(x, axis=-1)
    op = ops.softmax if which == "softmax_grad" else ops.log_softmax
    return [dy, x], op.te_grad(dy, x, axis=-1, derived=False)[0]


def _want(which, a, d):
    d = d.astype("float64")
    if which == "softmax":
        return _softmax(a)
    if which == "log_softmax":
        return _log_softmax(a)
    s = _softmax(a)
    if which == "softmax_grad":
        return s * (d - (d * s).sum(-1, keepdims=True))
    return d - s * d.sum(-1, keepdims=True)


@_over_odd_rows
@pytest.mark.parametrize("which", ["softmax", "log_softmax", "softmax_grad", "log_softmax_grad"])
def test_softmax_family_over_odd_widths(which, width, dtype, target):
    x = te.placeholder((ROWS, width), dtype, name="x")
    dy = te.placeholder((ROWS, width), dtype, name="dy")
    inputs, out = _kernel(which, x, dy)
    func, rule, tgt = schedule(inputs, out, target)
    if _tailed(width, _lanes(target, dtype)):
        assert "sm_max=tiled[lanes v" in rule and "scalar" not in rule, rule
    a = _rows(width, dtype, width)
    a[3, :] = np.random.default_rng(1).standard_normal(width)  # no row of -inf (NaN in torch)
    d = np.random.default_rng(2).standard_normal((ROWS, width)).astype(dtype)
    args = [a] if len(inputs) == 1 else [d, a]
    got, = run(func, tgt, args, [(ROWS, width)], dtype)
    _check(got, _want(which, a, d), dtype)


def _cross_entropy(a, labels):
    lsm = _log_softmax(a)
    valid = labels != -100
    picked = lsm[np.arange(len(labels)), np.where(valid, labels, 0)]
    return -(picked * valid).sum() / valid.sum()


def _cross_entropy_grad(a, labels, dy):
    valid = labels != -100
    onehot = np.zeros(a.shape)
    onehot[np.arange(len(labels))[valid], labels[valid]] = 1
    return dy * valid[:, None] / valid.sum() * (_softmax(a) - onehot)


@_over_odd_rows
@pytest.mark.parametrize("which", ["forward", "grad"])
def test_cross_entropy_over_odd_vocabularies(which, width, dtype, target):
    logits = te.placeholder((ROWS, width), dtype, name="logits")
    labels = te.placeholder((ROWS,), "int64", name="labels")
    dy = te.placeholder((), dtype, name="dy")
    if which == "forward":
        inputs, out = [logits, labels], ops.cross_entropy.te_forward(logits, labels)
    else:
        inputs = [dy, logits, labels]
        out = ops.cross_entropy.te_grad(dy, logits, labels, derived=False)[0]
    func, rule, tgt = schedule(inputs, out, target)
    if _tailed(width, _lanes(target, dtype)):
        assert "sm_max=tiled[lanes v" in rule and "scalar" not in rule, rule
        assert "sm_sum=tiled[lanes v" in rule, rule
    a = _rows(width, dtype, width + 1)
    a[3, :] = np.random.default_rng(1).standard_normal(width)
    rng = np.random.default_rng(3)
    lab = rng.integers(0, width, ROWS)
    lab[[0, 1, 2, 4]] = [width - 1, width - 2, 1, width - 1]  # labels in the tail and bulk
    lab[[7, 9]] = -100  # ignored
    if which == "forward":
        got, = run(func, tgt, [a, lab], [()], dtype)
        want = _cross_entropy(a, lab)
    else:
        g = np.array(0.75, dtype)
        got, = run(func, tgt, [g, a, lab], [(ROWS, width)], dtype)
        want = _cross_entropy_grad(a, lab, 0.75)
    _check(np.asarray(got), np.asarray(want), dtype)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("which", ["forward", "dx"])
def test_layer_norm_over_a_width_of_100(which, target):
    """Layer norm's per-row mean and variance over 100 features: vector partial sums with a
    tail, and the values numpy's."""
    n = 100
    x, dy = te.placeholder((ROWS, n), name="x"), te.placeholder((ROWS, n), name="dy")
    gamma, beta = te.placeholder((n,), name="gamma"), te.placeholder((n,), name="beta")
    rng = np.random.default_rng(5)
    a = (rng.standard_normal((ROWS, n)) * 2 + 0.5).astype("float32")
    g, b = rng.standard_normal(n).astype("float32"), rng.standard_normal(n).astype("float32")
    d = rng.standard_normal((ROWS, n)).astype("float32")
    xd = a.astype("float64")
    mean, var = xd.mean(-1, keepdims=True), xd.var(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + 1e-5)
    xhat = (xd - mean) * rstd
    if which == "forward":
        inputs, out = [x, gamma, beta], ops.layer_norm.te_forward(x, gamma, beta)
        args, want = [a, g, b], xhat * g + b
    else:
        inputs = [dy, x, gamma, beta]
        out = ops.layer_norm.te_grad(dy, x, gamma, beta, derived=False)[0]
        gg = d * g.astype("float64")
        args = [d, a, g, b]
        want = rstd * (gg - gg.mean(-1, keepdims=True) - xhat * (gg * xhat).mean(-1, keepdims=True))
    func, rule, tgt = schedule(inputs, out, target)
    assert "ln_mean_offset=tiled[lanes v" in rule and "tail " in rule and "scalar" not in rule, rule
    got, = run(func, tgt, args, [(ROWS, n)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_rows_enough_for_threads_take_the_tail_in_parallel():
    """Past the parallel threshold the rows' loop is parallel around the partial results,
    the tail and the lanes' combination of each row (a machine of several cores)."""
    rows, width = 24576, 103
    x = te.placeholder((rows, width), name="x")
    r = te.reduce_axis((0, width), "r")
    out = te.compute((rows,), lambda i: te.sum(x[i, r], axis=r), name="rowsum")
    func, rule, tgt = schedule([x], out)
    if cpu_schedule.CpuParams(tgt).cores > 1:
        assert "rowsum=tiled[lanes v16, tail 7, parallel]" in rule, rule
    a = np.random.default_rng(7).standard_normal((rows, width)).astype("float32")
    got, = run(func, tgt, [a], [(rows,)])
    np.testing.assert_allclose(got, a.astype("float64").sum(axis=1), rtol=1e-5, atol=1e-4)


def test_a_symbolic_number_of_rows_keeps_the_vector_bulk():
    """Rows counted at run time (a batch): the rows' loop is symbolic, the row of 103 is not."""
    from tvmfront._tvm import tirx
    x = te.placeholder((tirx.Var("B", "int64"), 103), name="x")
    func, rule, tgt = schedule([x], ops.log_softmax.te_forward(x, axis=-1))
    assert "sm_max=tiled[lanes v" in rule and "tail " in rule, rule
    a = _rows(103, "float32", 9)[:37]
    a[3, :] = 0.5
    got, = run(func, tgt, [a], [a.shape])
    _check(got, _log_softmax(a), "float32")
