"""Randomness without baked-in masks: Philox-4x32-10 in TE, ops.dropout, nn.Dropout.

Exact checks (the published Random123 known answers, bit-identical replay in this process and
in a fresh one, the numpy reference of tests/_philox.py), statistical checks (keep rate,
independence between steps, keys and streams), the gradient (finite differences are in the
op table; here: it redraws the forward's mask) and a compiled function whose key and counter
are runtime inputs: one kernel, new masks per counter.
"""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import nn, ops, te
from tvmfront.nn.dropout import rng_inputs
from tvmfront.ops import random

import _philox

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Random123's kat_vectors for philox4x32_10: (counter, key) -> output, four and two words.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _se(p, n):
    return np.sqrt(p * (1 - p) / n)


# ---- the generator -------------------------------------------------------------------------
def test_numpy_reference_matches_known_answers():
    for ctr, key, expected in KAT:
        assert [int(w) for w in _philox.philox4x32(ctr, key)] == list(expected)


def test_te_philox_matches_known_answers():
    # The TE rounds on runtime counters and keys (uint64 products, shifts, masks in LLVM).
    @tvf.op
    def philox(ctr, key):  # one row per vector: four outputs, one per word
        return te.compute((ctr.shape[0],), lambda i: list(random.philox4x32(
            [ctr[i, j] for j in range(4)], [key[i, 0], key[i, 1]])), name="philox")

    ctr = np.array([c for c, _, _ in KAT], np.uint32)
    key = np.array([k for _, k, _ in KAT], np.uint32)
    np.testing.assert_array_equal(np.stack(philox(ctr, key), axis=1),
                                  np.array([e for _, _, e in KAT], np.uint32))


def test_random_bits_layout_block_zero_is_the_known_answer():
    # Element j is word j % 4 of counter (j // 4, stream, counter lo, counter hi).
    zero = np.zeros(2, np.uint32)
    np.testing.assert_array_equal(ops.random_bits(zero, zero, (4,)), KAT[0][2])
    ones = np.full(2, 0xFFFFFFFF, np.uint32)
    got = ops.random_bits(ones, ones, (6,), stream=0xFFFFFFFF)
    np.testing.assert_array_equal(got[:4], _philox.philox4x32((0,) + KAT[1][0][1:], KAT[1][1]))
    np.testing.assert_array_equal(got, _philox.bits(ones, ones, (6,), 0xFFFFFFFF))


@pytest.mark.parametrize("key,counter", [
    (7, 0), (2 ** 64 - 1, 2 ** 63 + 5), (np.array(-3, np.int64), np.array(5, np.int32)),
    (np.array([1, 2], np.uint32), np.array([3, 4], np.int32)),
])
def test_random_bits_match_reference_for_every_key_and_counter_form(key, counter):
    np.testing.assert_array_equal(ops.random_bits(key, counter, (3, 7)),
                                  _philox.bits(key, counter, (3, 7)))


def test_uniform_statistics():
    n = 100_000
    for dtype in ("float32", "float64"):
        u = ops.uniform(11, 3, (n,), dtype=dtype)
        assert u.dtype == dtype and u.min() >= 0.0 and u.max() < 1.0
        assert abs(u.mean() - 0.5) < 4 * np.sqrt(1 / 12 / n)
        counts = np.histogram(u, bins=20, range=(0, 1))[0]
        chi2 = ((counts - n / 20) ** 2 / (n / 20)).sum()
        assert chi2 < 45, (dtype, chi2)  # 19 degrees of freedom: P(chi2 > 45) < 1e-3


# ---- dropout: statistics -----------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keep_rate_and_scale(p):
    x = np.random.default_rng(0).uniform(0.5, 1.5, (250, 400)).astype("float32")  # 1e5, no zeros
    y = ops.dropout(x, p, 42, 1)
    keep = y != 0
    assert abs(keep.mean() - (1 - p)) < 4 * _se(p, x.size), keep.mean()
    np.testing.assert_array_equal(y[keep], x[keep] * np.float32(1 / (1 - p)))


def _corr(a, b):
    return np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1]


def test_masks_independent_between_steps_keys_and_streams():
    x = np.ones((250, 400), "float32")
    n, bound = x.size, 4 / np.sqrt(x.size)
    base = ops.dropout(x, 0.5, 5, 10) != 0
    others = {
        "next step": ops.dropout(x, 0.5, 5, 11),
        "step + 2**32": ops.dropout(x, 0.5, 5, 10 + 2 ** 32),
        "other key": ops.dropout(x, 0.5, 6, 10),
        "key + 2**32": ops.dropout(x, 0.5, 5 + 2 ** 32, 10),
        "other stream": ops.dropout(x, 0.5, 5, 10, stream=1),
    }
    for what, y in others.items():
        mask = y != 0
        assert abs(_corr(base, mask)) < bound, what
        assert abs((base == mask).mean() - 0.5) < 4 * _se(0.5, n), what
    # Neighbouring elements (same Philox block, adjacent blocks) are uncorrelated as well.
    flat = base.ravel()
    for lag in (1, 4, 400):
        assert abs(_corr(flat[:-lag], flat[lag:])) < bound, lag


# ---- dropout: exact replay -----------------------------------------------------------------------
_REPLAY = ("import numpy as np, hashlib; from tvmfront import ops; "
           "x = np.linspace(-1, 1, 3000, dtype='float32').reshape(30, 100); "
           "print(hashlib.sha256(ops.dropout(x, 0.3, 2 ** 40 + 9, 123).tobytes()).hexdigest())")


def test_same_key_and_counter_replay_bit_identical_also_in_a_fresh_process():
    import hashlib

    x = np.linspace(-1, 1, 3000, dtype="float32").reshape(30, 100)
    a = ops.dropout(x, 0.3, 2 ** 40 + 9, 123)
    b = ops.dropout(x, 0.3, random.key(2 ** 40 + 9), np.array(123, np.int64))  # other forms
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, _philox.dropout(x, 2 ** 40 + 9, 123, p=0.3))
    out = subprocess.run([sys.executable, "-c", _REPLAY], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == hashlib.sha256(a.tobytes()).hexdigest()


def test_gradient_redraws_the_forward_mask():
    x = np.random.default_rng(1).uniform(0.5, 1.5, (20, 30))
    dy = np.random.default_rng(2).standard_normal((20, 30))
    y = ops.dropout(x, 0.4, 9, 3)
    dx, dkey, dcounter = ops.dropout.vjp(dy, x, random.key(9), np.array(3), p=0.4)
    np.testing.assert_array_equal(dx, dy * (y != 0) * (1 / 0.6))
    assert not dkey.any() and not dcounter.any()  # integer inputs: no gradient
    derived = ops.dropout.vjp(dy, x, random.key(9), np.array(3), p=0.4, derived=True)[0]
    np.testing.assert_array_equal(derived, dx)


def test_p0_is_identity_and_p1_zeros_like_torch():
    x = np.random.default_rng(3).standard_normal((4, 5))
    np.testing.assert_array_equal(ops.dropout(x, 0.0, 1, 1), x)
    np.testing.assert_array_equal(ops.dropout(x, 1.0, 1, 1), np.zeros_like(x))
    # A dropped inf is NaN, as torch's input * mask.
    y = ops.dropout(np.full((64,), np.inf), 0.5, 1, 1)
    assert np.isnan(y).any() and np.isinf(y).any()


@pytest.mark.parametrize("call,error,match", [
    (lambda x: ops.dropout(x, 1.5, 1, 1), ValueError, "between 0 and 1"),
    (lambda x: ops.dropout(x, float("nan"), 1, 1), ValueError, "between 0 and 1"),
    (lambda x: ops.dropout(x, "0.5", 1, 1), TypeError, "p must be a number"),
    (lambda x: ops.dropout(x.astype("int32"), 0.5, 1, 1), TypeError, "float tensor"),
    (lambda x: ops.dropout(x, 0.5, np.zeros(3, np.uint32), 1), TypeError, "key must be"),
    (lambda x: ops.dropout(x, 0.5, np.array(1.0), 1), TypeError, "key must be"),
    (lambda x: ops.dropout(x, 0.5, 1, np.zeros((2, 2), np.int64)), TypeError, "counter must"),
    (lambda x: ops.dropout(x, 0.5, -1, 1), ValueError, "key -1"),
    (lambda x: ops.dropout(x, 0.5, 1, 2.0), TypeError, "counter must be an integer"),
    (lambda x: ops.dropout(x, 0.5, 1, np.array(-2.0)), ValueError, "non-negative integer"),
    (lambda x: ops.dropout(x, 0.5, 1, np.array(2.5)), ValueError, "non-negative integer"),
    (lambda x: ops.dropout(x, 0.5, 1, 1, stream=-1), ValueError, "stream"),
    (lambda x: ops.random_bits(1, 1, (2, -1)), ValueError, "negative"),
    (lambda x: ops.uniform(1, 1, (2,), dtype="int32"), TypeError, "float32 or float64"),
], ids=["p>1", "p-nan", "p-str", "int-x", "key-shape", "key-float", "counter-shape",
        "key-negative", "counter-py-float", "counter-negative", "counter-fraction", "stream",
        "shape", "uniform-dtype"])
def test_bad_input_is_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call(np.ones((2, 3)))


# ---- nn.Dropout ---------------------------------------------------------------------------------
def test_manual_seed_sets_the_eager_dropout_seed_and_replays():
    layer, x = nn.Dropout(0.5), np.ones((40, 50), "float32")
    tvf.manual_seed(3)
    assert nn.init.seed() == 3
    first, second = layer(x), layer(x)
    assert (first != second).any()  # each call a new counter
    tvf.manual_seed(3)
    np.testing.assert_array_equal(layer(x), first)
    np.testing.assert_array_equal(layer(x), second)
    tvf.manual_seed(4)
    assert (layer(x) != first).any()
    # The eager default is key = the seed, counter = calls since manual_seed, stream 0.
    np.testing.assert_array_equal(first, ops.dropout(x, 0.5, 3, 0))
    tvf.manual_seed(0)


def test_dropout_layer_modes_and_streams():
    layer, x = nn.Dropout(0.25), np.ones((8, 16), "float32")
    assert repr(layer) == "Dropout(p=0.25)"
    with rng_inputs(training=False):
        assert layer(x) is x
    layer.training = False  # what Module.eval() sets, as in PyTorch
    assert layer(x) is x
    layer.training = True
    assert nn.Dropout(0.0)(x) is x
    key, counter = random.key(5), np.array(2, np.int64)
    with rng_inputs(key=key, counter=counter) as inputs:
        a, b = layer(x), layer(x)  # one layer called twice: streams 0 and 1
        assert inputs.used == 2 and inputs.next_stream() == 2
    np.testing.assert_array_equal(a, ops.dropout(x, 0.25, key, counter, stream=0))
    np.testing.assert_array_equal(b, ops.dropout(x, 0.25, key, counter, stream=1))
    assert (a != b).any()


def test_dropout_layer_errors():
    for bad in (-0.1, 1.1, True, "0.5"):
        with pytest.raises(ValueError, match="between 0 and 1"):
            nn.Dropout(bad)
    with pytest.raises(TypeError, match="key= and counter="):
        with rng_inputs(key=random.key(1)):
            pass


def test_compiled_inference_traces_dropout_as_the_identity_in_any_mode():
    # compile_inference traces eval mode whatever mode the model is in (train mode here);
    # the compiled train step draws masks: tests/test_dropout_training.py
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    assert model.training
    linear, _ = (m for _, m in model.named_children())
    infer = tvf.compile_inference(model, inputs=(2, 4))
    x = np.random.default_rng(0).standard_normal((2, 4)).astype("float32")
    np.testing.assert_allclose(infer(x), linear(x), rtol=1e-5, atol=1e-6)


# ---- compiled: key and counter are runtime inputs of one built function -------------------------
def test_compiled_function_draws_new_masks_per_counter_and_replays():
    # What graph building does for a train step (see nn/dropout.py): a function whose key and
    # counter are inputs, a trace under rng_inputs, Relax's Gradient, the lowering pipeline.
    from tvmfront import pipeline
    from tvmfront._tvm import relax, to_device, tvm
    from tvmfront.build import build_lowered
    from tvmfront.graph import _emit_function
    from tvmfront.tensor import Tensor, Trace, new_var, tracing

    model = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.5), nn.ReLU(), nn.Dropout(0.25))
    (_, w), (_, b) = model.named_parameters()
    bb = relax.BlockBuilder()
    x, key, step = new_var("x", (8, 16), "float32"), new_var("key", (2,), "uint32"), \
        new_var("step", (), "float32")  # the compiled step's float32 step as the counter
    pw, pb = new_var("w", w.shape, "float32"), new_var("b", b.shape, "float32")

    def body():
        trace = Trace(bb, {id(w): Tensor(pw, requires_grad=True),
                           id(b): Tensor(pb, requires_grad=True)})
        with tracing(trace), rng_inputs(key=Tensor(key), counter=Tensor(step)):
            out = model(Tensor(x))
            return ops.sum(out * out)

    _emit_function(bb, "loss", [x, key, step, pw, pb], body)
    mod = bb.get()
    mod = relax.transform.Gradient("loss", require_grads=list(mod["loss"].params[3:]))(mod)
    built = build_lowered(pipeline.run(mod, pipeline.LOWERING), "x86")
    assert built.info["fallback_kernels"] == {}
    vm = relax.VirtualMachine(built.library, tvm.cpu())
    xv = np.random.default_rng(0).standard_normal((8, 16)).astype("float32")
    kv = random.key(2 ** 33 + 1)

    def run(counter):
        loss, grads = vm["loss_adjoint"](*[to_device(a) for a in (
            xv, kv, np.array(counter, "float32"), w.data, b.data)])
        return float(loss.numpy()), [g.numpy() for g in grads]

    def eager(counter):  # the same model eagerly, masks from ops.dropout at streams 0 and 1
        h = xv @ w.data.T + b.data
        m1 = ops.dropout(np.ones_like(h), 0.5, kv, np.array(counter, np.float32), stream=0)
        a = np.maximum(h * m1, 0)
        m2 = ops.dropout(np.ones_like(a), 0.25, kv, np.array(counter, np.float32), stream=1)
        out = a * m2
        dh = 2 * out * m2 * (h * m1 > 0) * m1
        return float((out * out).sum()), [dh.T @ xv, dh.sum(0)]

    one, two, again = run(1), run(2), run(1)
    assert one[0] != two[0]
    assert one[0] == again[0] and all(np.array_equal(g, h) for g, h in zip(one[1], again[1]))
    for counter, (loss, grads) in ((1, one), (2, two)):
        ref_loss, ref_grads = eager(counter)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        for g, r in zip(grads, ref_grads):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(4, 128), (2, 3, 64), (5, 30)])
def test_scheduled_dropout_kernels_keep_their_rule_and_the_eager_masks(shape):
    # A counter read as a 0-d buffer crashed the column check of the spatial rule
    # (conv._shifted_column_reads) wherever a row's blocks of four filled whole vectors (a last
    # dimension a multiple of 64 on AVX-512, of 32 on AVX2): the dropout of every Transformer
    # width then fell back to a scalar loop, 10x slower ([2048, 1024]: 21 -> 2.0 ms).
    from tvmfront._tvm import to_device, tvm
    from tvmfront.build import compile_kernels
    from tvmfront.schedule import schedule_prim_func
    from tvmfront.target import resolve_target

    rng = np.random.default_rng(0)
    xv = rng.standard_normal(shape).astype("float32")
    dyv = rng.standard_normal(shape).astype("float32")
    kv, counter = random.key(2 ** 40 + 3), np.array(7.0, "float32")
    x = te.placeholder(shape, "float32", name="x")
    dy = te.placeholder(shape, "float32", name="dy")
    key = te.placeholder((2,), "uint32", name="key")
    step = te.placeholder((), "float32", name="step")
    forward = ops.dropout.te_forward(x, key, step, p=0.3, stream=2)
    grad = ops.dropout.te_grad(dy, x, key, step, p=0.3, stream=2)[0]
    want = ops.dropout(xv, 0.3, kv, counter, stream=2)
    for target in ("x86", "x86:avx2"):
        for out, inputs, values, expected in (
                (forward, [x, key, step], [xv], want),
                (grad, [dy, x, key, step], [dyv, xv], dyv * (want != 0) / np.float32(0.7))):
            failures = {}
            func, rule = schedule_prim_func(te.create_prim_func(inputs + [out]),
                                            resolve_target(target), failures=failures)
            assert failures == {} and rule.startswith("tvmfront: "), (target, rule, failures)
            lib = compile_kernels(func, resolve_target(target))
            result = tvm.runtime.empty(shape, "float32", tvm.cpu())
            lib["main"](*[to_device(v) for v in (*values, kv, counter)], result)
            np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6, err_msg=target)


@pytest.mark.parametrize("order", ["dropout, reshape", "reshape, dropout"])
def test_dropout_fused_with_a_reshape_computes_each_philox_block_once(order):
    # A Transformer's dropout sits beside reshapes ([B, T, E] <-> [B * T, E]), which FuseOps
    # fuses into its kernel: the flattened index, cut again ((j // 128 + i) % 1024 // 64, j %
    # 128), hid the four words' v // 4 from the spatial rule, so the kernel ran every Philox
    # block once per word, vectorized: 1.2-2.0 ms instead of 0.13-0.16 for [16, 64, 128].
    from tvmfront._tvm import to_device, tvm
    from tvmfront.build import compile_kernels
    from tvmfront.schedule import schedule_prim_func
    from tvmfront.target import resolve_target

    shape, flat = (2, 16, 128), (32, 128)
    xv = np.random.default_rng(0).standard_normal(shape).astype("float32")
    kv, counter = random.key(5), np.array(11.0, "float32")
    key = te.placeholder((2,), "uint32", name="key")
    step = te.placeholder((), "float32", name="step")
    if order == "dropout, reshape":
        x = te.placeholder(shape, "float32", name="x")
        out = ops.reshape.te_forward(ops.dropout.te_forward(x, key, step, p=0.2), shape=flat)
        want = ops.dropout(xv, 0.2, kv, counter).reshape(flat)
    else:
        x = te.placeholder(flat, "float32", name="x")
        out = ops.dropout.te_forward(ops.reshape.te_forward(x, shape=shape), key, step, p=0.2)
        xv = xv.reshape(flat)
        want = ops.dropout(xv.reshape(shape), 0.2, kv, counter)
    target = resolve_target("x86")
    func, rule = schedule_prim_func(te.create_prim_func([x, key, step, out]), target)
    assert "split 4, unrolled" in rule, rule
    result = tvm.runtime.empty(want.shape, "float32", tvm.cpu())
    compile_kernels(func, target)["main"](*[to_device(v) for v in (xv, kv, counter)], result)
    np.testing.assert_array_equal(result.numpy(), want)
