"""erf, exp, sigmoid and tanh for float32 in plain TE arithmetic, so LLVM vectorizes them
(`tvf.fastmath.exp(x(*i))` in an op's te.compute, where `te.exp` would be slow in float32).

`te.erf` / `te.exp` / `te.sigmoid` / `te.tanh` lower to libm calls made one element at a time
(LLVM has no vector erf or exp without a vector math library): exact GELU and its gradient were
18% of the char Transformer's train step, the attention softmax, its gradient and the
cross-entropy a further 25% (2.9 ms for a 16x4x64x64 softmax, 11 ns an element; tanh 19 ns).
Accuracy: 1.2-1.8e-7 relative over the whole range, specials (inf, NaN) as libm; exp's
results below the smallest normal float32 (1.2e-38) are 0, as under flush-to-zero
(tests/test_fastmath.py). Other dtypes keep the TE intrinsics: float64 is what the
finite-difference gradient checks run in, and it must stay exact. Derived gradients go
through the arithmetic (the exponent-bit tricks are integer-valued: no derivative).
"""

from .._tvm import te, tirx

# erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (|erf| rounds to 1 in float32 beyond): the rational
# approximation of Eigen's generic_fast_erf_float (also XLA's ErfImpl32, TVM's fast_erf),
# highest power first.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)

# exp(a) = 2^n exp(r), n = round(a / ln 2), r = a - n ln 2 (ln 2 in two parts so that n ln 2 is
# exact), exp(r) = 1 + r + r^2 P(r) on |r| <= ln2/2: Cephes' expf, highest power first.
_LN2_HI, _LN2_LO, _LOG2E = 0.693359375, -2.12194440e-4, 1.44269504088896341
# The float32 just above ln(2^-126): exp of it is the smallest normal float32 (rounded up).
_EXP_MIN = -87.33654
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1)


def _c(v, dtype="float32"):
    return tirx.const(v, dtype)


def _horner(coefficients, x, dtype="float32"):
    acc = _c(coefficients[0], dtype)
    for k in coefficients[1:]:
        acc = acc * x + _c(k, dtype)
    return acc


def _nan_kept(a, value):
    """`value`, or NaN where `a` is NaN (min/max clamps may lose it)."""
    return tirx.Select(tirx.isnan(a), a, value)


def erf(a):
    """erf of a scalar TE expression; float32 by a rational approximation (GELU's accuracy
    is measured in tests/test_fastmath.py), other dtypes by te.erf."""
    if str(a.ty) != "float32":
        return te.erf(a)
    # The rational evaluated in float64 (still vector code) is 0.5 ulp from erf; in float32
    # its rounding added ~2.6 ulp of 1 near |x| = 3.4, which 1 + erf, in GELU's negative tail,
    # turns into 1.4e-6 absolute error.
    x = tirx.Cast("float64", te.max(te.min(a, _c(4.0)), _c(-4.0)))
    x2 = x * x
    value = tirx.Cast("float32", x * _horner(_ERF_P, x2, "float64")
                      / _horner(_ERF_Q, x2, "float64"))
    return _nan_kept(a, te.max(te.min(value, _c(1.0)), _c(-1.0)))


def exp(a):
    """exp of a scalar TE expression; float32 by range reduction and a polynomial, other
    dtypes by te.exp."""
    if str(a.ty) != "float32":
        return te.exp(a)
    # exp overflows to inf above 89 in float32. Below ln(smallest normal) it returns 0, not a
    # subnormal: subnormal arithmetic takes a microcode assist (~100x) on x86, and a causal
    # softmax's masked scores (-inf) made every exp, the row sum, the stored weights and the
    # softmax gradient that reads them subnormal or slow: 2.8x the softmax's time (390 against
    # 138 us for [16, 4, 64, 64] at 2 threads) and 3.4x in the Transformer's step.
    x = te.max(te.min(a, _c(89.0)), _c(_EXP_MIN))
    n = te.floor(x * _c(_LOG2E) + _c(0.5))
    r = x - n * _c(_LN2_HI) - n * _c(_LN2_LO)
    value = _c(1.0) + r + r * r * _horner(_EXP_P, r)
    # 2^n as two powers of two built from their exponent bits: each of n//2 and n - n//2 stays
    # a normal float32 exponent over n in [-150, 129].
    k = tirx.Cast("int32", n)
    half = k >> 1
    value = value * _pow2(half) * _pow2(k - half)
    return _nan_kept(a, tirx.Select(a < _c(_EXP_MIN), _c(0.0), value))


def sigmoid(a):
    """1 / (1 + exp(-a)); float32 through exp above (exp(-a) overflows to inf below a = -89,
    which gives 0 where the exact value is under 1e-38), other dtypes by te.sigmoid."""
    if str(a.ty) != "float32":
        return te.sigmoid(a)
    return _c(1.0) / (_c(1.0) + exp(-a))


# tanh(x) = x + x^3 P(x^2) for |x| < 0.625 (Cephes' tanhf; 1 - 2 / (exp(2|x|) + 1) loses the
# relative accuracy of small x to cancellation), highest power first.
_TANH_P = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
           -3.33332819422e-1)


def tanh(a):
    """tanh of a scalar TE expression; float32 by Cephes' tanhf (a polynomial near 0, exp
    beyond), other dtypes by te.tanh."""
    if str(a.ty) != "float32":
        return te.tanh(a)
    x2 = a * a
    small = a + a * x2 * _horner(_TANH_P, x2)
    z = te.abs(a)
    large = _c(1.0) - _c(2.0) / (exp(z + z) + _c(1.0))  # 1 once exp overflows to inf
    large = tirx.Select(a < _c(0.0), -large, large)
    return _nan_kept(a, tirx.Select(z < _c(0.625), small, large))


def _pow2(k):
    return tirx.reinterpret("float32", (k + 127) << 23)
