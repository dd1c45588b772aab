"""erf, exp, sigmoid, tanh and the normal CDF/pdf for float32 in plain TE arithmetic, so LLVM
vectorizes them (`tvf.fastmath.exp(x(*i))` in an op's te.compute, where `te.exp` would be slow
in float32).

`te.erf` / `te.exp` / `te.sigmoid` / `te.tanh` lower to libm calls made one element at a time
(LLVM has no vector erf or exp without a vector math library): exact GELU and its gradient were
18% of the char Transformer's train step, the attention softmax, its gradient and the
cross-entropy a further 25% (2.9 ms for a 16x4x64x64 softmax, 11 ns an element; tanh 19 ns).
Accuracy: 1.2-1.8e-7 relative over the whole range (normal_cdf: 1.3e-7 absolute, relative in
its tail to 2.3e-7 (1 + x^2 / 2)), specials (inf, NaN) as libm; exp's results below the smallest
normal float32 (1.2e-38) are 0, as under flush-to-zero (tests/test_fastmath.py). Other dtypes
keep the TE intrinsics: float64 is what the finite-difference gradient checks run in, and it
must stay exact. Derived gradients go through the arithmetic (the exponent-bit tricks are
integer-valued: no derivative).
"""

import math

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
# exp's n = round(a / ln 2) stops here, at 2^128 (inf in float32: exp is inf beyond
# ln(FLT_MAX) = 88.72).
_EXP_MAX = 89.0
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
    # |a| <= inf is false for NaN alone. tirx.isnan is a call TVM's VectorizeLoop does not
    # know: it emitted the loop scalar, which LLVM re-vectorized narrower than the schedule
    # (tanh's gradient 592 against 275 us on [1024, 512]). a == a TVM's simplifier folds to true.
    # NaN as a * a, not a: a gradient derived through `a` alone was 1 at NaN (derived exp and
    # tanh gave dy there), through a * a it is NaN, as PyTorch's. Not a * value: `value` twice
    # in the expression doubled every derived gradient through it at each fastmath call
    # (LeNet's derived train step compiled in 11 s, not 4.8).
    return tirx.Select(te.abs(a) <= _c(math.inf), value, a * a)


def erf(a):
    """erf of a scalar TE expression; float32 by a rational approximation (9.5e-8 absolute,
    tests/test_fastmath.py), other dtypes by te.erf. For 1/2 (1 + erf(x / sqrt 2)) use
    normal_cdf: the sum cancels as x -> -inf, and normal_cdf is float32 throughout."""
    if str(a.ty) != "float32":
        return te.erf(a)
    # The rational evaluated in float64 (still vector code) is 0.5 ulp from erf; in float32
    # its rounding added ~2.6 ulp of 1 near |x| = 3.4, which 1 + erf, in GELU's negative tail,
    # turned into 1.4e-6 absolute error (GELU now uses normal_cdf, 1.5x faster).
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
    return _exp32(a)


def _exp32(a, high=None):
    """float32 exp of `a`, or of `a` clamped to at most `high` (tanh's: exp(2|x|) of at most
    19, where tanh rounds to 1). Unclamped, inf above ln(FLT_MAX) = 88.72, and so is its
    derivative: 2^n stops at 2^128 (inf), times exp(r) of the rest of `a` (at least 1). A
    clamp of `a` at 89 had given the same inf, but a derived gradient of 0 beyond it."""
    # Below ln(smallest normal) it returns 0, not a subnormal: subnormal arithmetic takes a
    # microcode assist (~100x) on x86, and a causal softmax's masked scores (-inf) made every
    # exp, the row sum, the stored weights and the softmax gradient that reads them subnormal
    # or slow: 2.8x the softmax's time (390 against 138 us for [16, 4, 64, 64] at 2 threads)
    # and 3.4x in the Transformer's step.
    low = te.max(a, _c(_EXP_MIN))
    x = te.min(low, _c(high if high is not None else _EXP_MAX))
    n = te.floor(x * _c(_LOG2E) + _c(0.5))
    r = (x if high is not None else low) - n * _c(_LN2_HI) - n * _c(_LN2_LO)
    value = _c(1.0) + r + r * r * _horner(_EXP_P, r)
    # 2^n as two powers of two built from their exponent bits: each of n//2 and n - n//2 stays
    # a normal float32 exponent over n in [-150, 129].
    k = tirx.Cast("int32", n)
    half = k >> 1
    value = value * _pow2(half) * _pow2(k - half)
    return _nan_kept(a, tirx.Select(a < _c(_EXP_MIN), _c(0.0), value))


def sigmoid(a):
    """1 / (1 + exp(-a)); float32 through exp above, 0 where the exact value is under FLT_MIN
    (a subnormal), other dtypes by te.sigmoid."""
    if str(a.ty) != "float32":
        return te.sigmoid(a)
    # Below ln(FLT_MIN) (_EXP_MIN, where exp is 0 too) 1 / (1 + exp(-a)) < FLT_MIN. The 0 is
    # a branch, not exp(-a) overflowing to inf: a gradient derived through 1 / (1 + E) is
    # -E' / (1 + E)^2, NaN (inf / inf) where E = exp(-a) is inf (a in [-89, -88.72]; exp
    # clamps at 89). Forwards cost the same (sigmoid, SiLU on [1024, 512], one core,
    # interleaved: 1.01x); the derived SiLU gradient 0.94x.
    return tirx.Select(a < _c(_EXP_MIN), _c(0.0), _c(1.0) / (_c(1.0) + exp(-a)))


# tanh(x) = x + x^3 P(x^2) for |x| < 0.625 (Cephes' tanhf; 1 - 2 / (exp(2|x|) + 1) loses the
# relative accuracy of small x to cancellation), highest power first.
_TANH_P = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
           -3.33332819422e-1)
# 2|x| beyond which tanh rounds to 1 in float32 (1 - 2 / (exp(19) + 1) = 1 - 1.1e-8)
_TANH_EXP_HIGH = 19.0


def tanh(a):
    """tanh of a scalar TE expression; float32 by Cephes' tanhf (a polynomial near 0, exp
    beyond), other dtypes by te.tanh."""
    if str(a.ty) == "float64":
        # TVM's float64 tanh cancels near 0 (2.2e-5 relative at 1e-12, 0 below ~1e-17):
        # Taylor's series there, through x^9 (the next term is 1e-20 relative at 0.01, where
        # TVM's is within 2.4e-15)
        x2 = a * a
        series = a + a * x2 * _horner((62 / 2835, -17 / 315, 2 / 15, -1 / 3), x2, "float64")
        return tirx.Select(te.abs(a) < tirx.const(0.01, "float64"), series, te.tanh(a))
    if str(a.ty) != "float32":
        return te.tanh(a)
    x2 = a * a
    small = a + a * x2 * _horner(_TANH_P, x2)
    z = te.abs(a)
    # exp(2|x|) clamped at exp(19): above it 1 - 2 / (E + 1) rounds to 1 in float32 anyway,
    # and a gradient derived through it (4 E / (E + 1)^2) no longer overflows: unclamped, E
    # and E^2 reached inf together for |x| in (43.7, 44.5], NaN there and in tanh-GELU's
    # derived gradient at |x| ~ 10.07; a clamp costs nothing, exp has one
    large = _c(1.0) - _c(2.0) / (_exp32(z + z, _TANH_EXP_HIGH) + _c(1.0))
    large = tirx.Select(a < _c(0.0), -large, large)
    return _nan_kept(a, tirx.Select(z < _c(0.625), small, large))


# Phi(x) = P(N(0, 1) <= x), the normal CDF, in float32 with no cancellation: 1/2 (1 + erf(x /
# sqrt 2)) keeps 1 + erf's rounding (~1e-7 absolute) as x -> -inf, where Phi is tiny and GELU's
# x Phi(x) is not. Instead the tail t = Phi(-|x|) = exp(-x^2 / 2) P(|x|) / Q(|x|), and Phi = t
# for x < 0, 1 - t above. P / Q fits R(a) = exp(a^2 / 2) Phi(-a) (smooth: 1/2 at 0,
# ~1 / (a sqrt(2 pi)) for large a) on [0, 12.9] to 4.7e-9 relative: minimax in float64,
# coefficients rounded to float32, highest power first. One branch, no split at |x| ~ 1: the
# exp is the pdf's, which GELU's gradient Phi + x phi needs too.
_PHI_TAIL_P = (3.985625226050615e-3, 3.974943235516548e-2, 0.1806069165468216, 0.4347352981567383,
               0.5)
_PHI_TAIL_Q = (9.990328922867775e-3, 9.964479506015778e-2, 0.46253347396850586,
               1.1915671825408936, 1.6673555374145508, 1.0)
# |x| beyond which Phi(-|x|) and the pdf count as 0 (< 1.2e-38): below it exp(-x^2 / 2) >= 7e-37
# and P / Q >= 0.03, so the tail, the pdf and GELU's products of them stay normal float32
# (subnormals are slow: see exp).
_GAUSS_CUT = 12.9
# exp(f) on |f| <= ln(2) / 2 to 2e-9 relative (minimax), highest power first
_EXP_F = (1.3843653723597527e-3, 8.37415549904108e-3, 4.166800156235695e-2, 0.16666431725025177,
          0.4999999403953552, 1.0, 1.0)
_INV_SQRT_2PI = 0.3989422804014327


def normal_cdf(a):
    """Phi(a), the standard normal CDF, of a scalar TE expression; float32 in plain arithmetic
    (accurate in the tail a -> -inf, where 1/2 (1 + erf) cancels), float64 by te.erf,
    float16 and bfloat16 through float32."""
    return normal_cdf_and_pdf(a)[0]


def normal_cdf_and_pdf(a):
    """(Phi(a), phi(a)): the standard normal CDF and density of a scalar TE expression, which
    share one exp in float32 (exact GELU's gradient Phi + x phi); float64 by te.erf and
    te.exp, float16 and bfloat16 through float32. Phi(-inf) = 0, Phi(inf) = 1, phi(+-inf) = 0, NaN stays NaN."""
    d = str(a.ty)
    if d not in ("float32", "float64"):  # float16, bfloat16: no erf intrinsic for them
        cdf, pdf = normal_cdf_and_pdf(tirx.Cast("float32", a))
        return tirx.Cast(d, cdf), tirx.Cast(d, pdf)
    if d != "float32":
        half = _c(0.5, d)
        return (half * (_c(1.0, d) + te.erf(a * _c(1 / math.sqrt(2), d))),
                te.exp(-half * a * a) * _c(_INV_SQRT_2PI, d))
    z = te.abs(a)
    far = z > _c(_GAUSS_CUT)
    r = tirx.Select(far, _c(_GAUSS_CUT), z)  # a clamp that keeps NaN (min may not)
    gauss = tirx.Select(far, _c(0.0), _gauss(r))
    tail = gauss * _horner(_PHI_TAIL_P, r) / _horner(_PHI_TAIL_Q, r)
    return tirx.Select(a < _c(0.0), tail, _c(1.0) - tail), gauss * _c(_INV_SQRT_2PI)


def _gauss(r):
    """exp(-r^2 / 2) for r in [0, _GAUSS_CUT]: exp's reduction without its clamps and special
    cases (none can occur here), with 2^n in one step (n >= -120) and ln 2 in one float32 part
    (off by 1.9e-9: n of that, relative, where the result is below 2^(n + 1/2)). With exp
    instead, GELU's forward took 294 against 220 us, its gradient 310 against 248 ([1024, 512],
    1 thread)."""
    y = r * r * _c(-0.5)  # the halving is exact: one rounding, in r * r
    n = te.floor(y * _c(_LOG2E) + _c(0.5))
    f = n * _c(-math.log(2)) + y
    return _horner(_EXP_F, f) * _pow2(tirx.Cast("int32", n))


def _pow2(k):
    return tirx.reinterpret("float32", (k + 127) << 23)
