"""Floor divisions of indices whose terms count down (tvmfront/index_division.py): TVM 0.27's
IterMapSimplify turned (7 - v) // 2 into v // -2 + 3 (2 at v = 1, not 3), so eager kernels read
the wrong elements: a user op's x[(7 - i) // 2], and the derived gradient of a max over
windows read in reverse."""

import random

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import build, index_division, nn
from tvmfront._tvm import te as tvm_te
from tvmfront._tvm import tirx, tvm
from tvmfront.target import resolve_target

te = tvf.te


def _fd(ref, x, dy, eps=1e-6):
    """Central differences of sum(dy * ref(x)) in float64."""
    x, grad = x.copy(), np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        v = x[idx]
        x[idx] = v + eps
        plus = np.sum(dy * ref(x))
        x[idx] = v - eps
        grad[idx] = (plus - np.sum(dy * ref(x))) / (2 * eps)
        x[idx] = v
    return grad


@tvf.op
def halved_reversed(x):
    """out[i, ...] = x[(7 - i) // 2, ...]: each row of x twice, in reverse."""
    return te.compute((8, *x.shape[1:]), lambda i, *rest: x[(7 - i) // 2, *rest],
                      name="halved_reversed")


@pytest.mark.parametrize("shape", [(4,), (4, 3)])
def test_a_reversed_halving_read_reads_the_right_rows(shape):
    x = np.arange(float(np.prod(shape))).reshape(shape)
    want = x[(7 - np.arange(8)) // 2]
    np.testing.assert_array_equal(halved_reversed(x), want)

    class Model(nn.Module):
        def forward(self, x):
            return halved_reversed(x)
    module = tvf.compile_inference(Model(), inputs=(4, 3))
    x = np.arange(12.0, dtype="float32").reshape(4, 3)
    np.testing.assert_array_equal(np.asarray(module(x)), x[(7 - np.arange(8)) // 2])


def _windows(reduce, read):
    def windows(x):
        k = te.reduce_axis((0, 2), "k")
        return te.compute((3,), lambda i: reduce(read(x, i, k), axis=k), name="windows")
    return tvf.op(windows)


@pytest.mark.parametrize("reduce, read, ref", [
    (te.max, lambda x, i, k: x[4 - 2 * i + k],
     lambda x: np.array([max(x[4 - 2 * i], x[5 - 2 * i]) for i in range(3)])),
    (te.min, lambda x, i, k: x[5 - (2 * i + k)],
     lambda x: np.array([min(x[5 - 2 * i], x[4 - 2 * i]) for i in range(3)])),
], ids=["max", "min"])
def test_a_derived_gradient_over_reversed_windows_goes_to_each_windows_extremum(reduce, read,
                                                                                 ref):
    op = _windows(reduce, read)
    x = np.random.default_rng(0).standard_normal(6)
    dy = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(op(x), ref(x))
    np.testing.assert_allclose(op.vjp(dy, x, derived=True)[0], _fd(ref, x, dy), atol=1e-8)
    assert tvf.gradcheck(op, [x])


def test_a_max_pool_over_reversed_rows_has_the_gradient_of_finite_differences():
    @tvf.op
    def pool_flipped(x):
        k, l = te.reduce_axis((0, 2), "k"), te.reduce_axis((0, 2), "l")
        return te.compute((3, 2), lambda i, j: te.max(x[5 - 2 * i - k, 2 * j + l], axis=[k, l]),
                          name="pool_flipped")

    def ref(x):
        return np.array([[max(x[5 - 2 * i - k, 2 * j + m] for k in range(2) for m in range(2))
                          for j in range(2)] for i in range(3)])
    x = np.random.default_rng(0).standard_normal((6, 4))
    dy = np.arange(1.0, 7.0).reshape(3, 2)
    np.testing.assert_allclose(pool_flipped.vjp(dy, x, derived=True)[0], _fd(ref, x, dy),
                               atol=1e-8)


def _index_read(c, a, s, kind):
    """src[q(i) - lo] over i < 8, q = (c + a i) // s (or % s), and what numpy computes for it."""
    vals = c + a * np.arange(8)
    q = vals // s if kind == "div" else vals % s
    lo = int(q.min())
    src = tvm_te.placeholder((int(q.max()) - lo + 1,), "float64", name="src")

    def index(i):
        return (tirx.floordiv(c + a * i, s) if kind == "div" else tirx.floormod(c + a * i, s)) - lo
    out = tvm_te.compute((8,), lambda i: src[index(i)], name="out")
    return tvm_te.create_prim_func([src, out]), q - lo


def test_seeded_index_divisions_compile_to_numpys_values():
    """40 random floordivs/floormods of a loop variable, each built through the kernels' TIR
    pipeline and run against numpy's floor division: 20 counting down (the form TVM got
    wrong), 20 of any sign."""
    rng = random.Random(7)
    wrong_before = 0
    for n in range(40):
        a = rng.randint(-3, -1) if n < 20 else rng.randint(-3, 3)
        c, s, kind = rng.randint(-6, 14), rng.randint(2, 5), rng.choice(["div", "mod"])
        func, want = _index_read(c, a, s, kind)
        wrong_before += c % s != 0 and a < 0  # (IterMapSimplify dropped c's remainder)
        lib = build.compile_kernels(tvm.IRModule({"main": func}), resolve_target("x86"))
        src = np.arange(want.max() + 1, dtype="float64") + 100
        out = tvm.runtime.empty((8,), "float64", tvm.cpu())
        lib["main"](tvm.runtime.tensor(src), out)
        np.testing.assert_array_equal(out.numpy(), want + 100,
                                      err_msg=f"({c} + {a}i) {kind} {s}")
    assert wrong_before >= 10


def test_numerators_with_a_positive_term_are_left_alone():
    i, j = tirx.Var("i", "int32"), tirx.Var("j", "int32")
    for expr in (tirx.floordiv(i + 7, 2), tirx.floordiv(i - j + 7, 2),
                 tirx.floormod(i * j - 7, 2)):
        assert index_division.rewrite(expr).same_as(expr)
    negated = index_division.rewrite(tirx.floordiv(7 - i, 2))
    assert not negated.same_as(tirx.floordiv(7 - i, 2))
    for v in range(-5, 9):
        value = tvm.sym.Analyzer().simplify(tvm.tirx.Let(i, tirx.const(v, "int32"), negated))
        assert int(value.value) == (7 - v) // 2
