"""A sum's terms that read a zero padding, skipped where they read it
(tvmfront/schedule/padded_terms.py): the rewrite on a marked block, and convolutions scheduled
by conv_forward with their padding inlined: numpy's values, the same as through the padded
copy, every output written."""

import numpy as np
import pytest

from tvmfront import ops
from tvmfront._tvm import te, to_device, tvm
from tvmfront.build import compile_kernels
from tvmfront.schedule import conv_forward, padded_terms, schedule_prim_func
from tvmfront.target import resolve_target

from test_conv_grad import _conv_grads_ref
from test_conv_register_tiles import _realizes

# The init apart (as conv_forward decomposes it), then the marked update...
_INIT = """    for i in range(6):
        with T.sblock("init"):
            vi = T.axis.remap("S", [i])
            out[vi] = T.float32(0)
        for k in range(3):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                T.sblock_attr({"tvmfront.skip_padded_terms": 1})
"""
# ... or the init held in the update block.
_WITH_INIT = """    for i, k in T.grid(6, 3):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                T.sblock_attr({"tvmfront.skip_padded_terms": 1})
                with T.init():
                    out[vi] = T.float32(0)
"""
_GUARDED = """T.if_then_else(1 <= vi + vk and vi + vk < 7,
                                                   a[vi + vk - 1], T.float32(0))"""
_MARKED = """
@T.prim_func(s_tir=True)
def main(a: T.Buffer((8,), "float32"), b: T.Buffer((3,), "float32"),
         out: T.Buffer((6,), "float32")):
""" + _INIT + """                out[vi] = out[vi] + """ + _GUARDED + """ * b[vk]
"""


def _padded_sum(func):
    """out of the 3-tap sum over a zero-padded `a` (the marked function's), and numpy's."""
    av = np.arange(1, 9, dtype="float32")
    bv = np.array([0.5, -1.0, 2.0], "float32")
    got = to_device(np.full(6, np.nan, "float32"))
    tvm.compile(tvm.IRModule({"main": func}), target="llvm")["main"](
        to_device(av), to_device(bv), got)
    padded = np.concatenate([[0], av[:6], [0]])
    return got.numpy(), [sum(padded[i + k] * bv[k] for k in range(3)) for i in range(6)]


def test_a_marked_sum_skips_its_padded_terms():
    """The guarded term's condition becomes the block's predicate (likely, over the loop
    variables), the term reads a directly, the mark is gone; the values are the padded sum's."""
    func = tvm.script.from_source(_MARKED)
    assert padded_terms.SKIP in _MARKED
    out = padded_terms.skip_padded_terms(func)
    update = _realizes(out)["update"]
    predicate = str(update.predicate)
    assert "likely" in predicate and "i + k" in predicate, predicate
    assert "if_then_else" not in str(update.block.body), update.block.body
    assert padded_terms.SKIP not in update.block.annotations
    got, want = _padded_sum(out)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("change", ["plain product", "init in the block"])
def test_a_marked_block_of_another_form_keeps_its_body(change):
    """A product without a select of zero (a plain sum) is left as it is, and so is a block
    that holds its init (the predicate would skip the init where the guard fails: out[0]
    came out NaN), both unmarked, the values still the padded sum's."""
    source = _MARKED.replace(_GUARDED, "a[vi + vk]") if change == "plain product" else \
        _MARKED.replace(_INIT, _WITH_INIT)
    assert source != _MARKED
    out = padded_terms.skip_padded_terms(tvm.script.from_source(source))
    update = _realizes(out)["update"]
    assert "likely" not in str(update.predicate), update.predicate
    assert padded_terms.SKIP not in update.block.annotations
    if change == "init in the block":
        assert "if_then_else" in str(update.block.body)
        got, want = _padded_sum(out)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def _conv(x_shape, w_shape, stride, padding, epilogue=False):
    x = te.placeholder(x_shape, "float32", name="x")
    w = te.placeholder(w_shape, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=stride, padding=padding)
    if epilogue:  # an inference conv + batch norm + relu: absorbed into the write-back
        y = te.compute(y.shape, lambda *i: te.max(y(*i) * 0.5 + 0.25, 0.0), name="bn_relu")
    return te.create_prim_func([x, w, y]), [int(d) for d in y.shape]


def _reference(xv, wv, stride, padding):
    """NCHW conv in float64 with padding (rows, columns), kernels of any shape."""
    ph, pw = padding
    xp = np.pad(xv.astype("float64"), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = wv.shape[2:]
    ho, wo = (xp.shape[2] - kh) // stride + 1, (xp.shape[3] - kw) // stride + 1
    out = np.zeros((xv.shape[0], wv.shape[0], ho, wo))
    for a in range(kh):
        for b in range(kw):
            window = xp[:, :, a:a + stride * ho:stride, b:b + stride * wo:stride]
            out += np.einsum("ncij,oc->noij", window, wv[:, :, a, b].astype("float64"))
    return out


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, epilogue", [
    ((16, 8, 12, 12), (16, 8, 3, 3), 1, (1, 1), False),
    ((16, 8, 12, 12), (16, 8, 5, 5), 1, (2, 2), True),   # 2 border rows and columns
    ((16, 8, 15, 15), (16, 8, 3, 3), 2, (1, 1), False),  # odd input, stride 2
    ((16, 8, 12, 12), (16, 8, 3, 5), 1, (1, 2), False),  # rows and columns padded apart
])
def test_convolutions_with_skipped_padding_are_numpy_s(monkeypatch, x_shape, w_shape, stride,
                                                       padding, epilogue):
    """conv_forward's rule forced onto AVX2 code (so that any x86 host runs it), compiled as
    modules are (LoopPartition on): numpy's values, and the same as the padded copy's."""
    monkeypatch.setattr(conv_forward, "CONV_MIN_VECTOR_BITS", 256)
    func, out_shape = _conv(x_shape, w_shape, stride, padding, epilogue)
    target = resolve_target("x86:avx2")
    rng = np.random.default_rng(4)
    xv = rng.standard_normal(x_shape).astype("float32")
    wv = rng.standard_normal(w_shape).astype("float32")
    want = _reference(xv, wv, stride, padding)
    if epilogue:
        want = np.maximum(want * 0.5 + 0.25, 0.0)
    outs = []
    for skip in (True, False):
        if not skip:
            monkeypatch.setattr(conv_forward, "inline_padding", lambda sch, block: [])
        scheduled, rule = schedule_prim_func(func, target)
        assert ("padding skipped" in rule) == skip, rule
        out = to_device(np.full(out_shape, np.nan, "float32"))
        compile_kernels(scheduled, target)["main"](to_device(xv), to_device(wv), out)
        outs.append(out.numpy())
    np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-6)


def test_a_padding_read_by_another_block_is_copied(monkeypatch):
    """A padded tensor that is also an output of the kernel stays a block: conv_forward
    copies it per image, as before, and computes numpy's conv."""
    monkeypatch.setattr(conv_forward, "CONV_MIN_VECTOR_BITS", 256)
    x = te.placeholder((16, 8, 10, 10), "float32", name="x")
    w = te.placeholder((16, 8, 3, 3), "float32", name="w")
    xp = te.compute((16, 8, 12, 12), lambda n, c, i, j: te.if_then_else(
        te.all(i >= 1, i < 11, j >= 1, j < 11), x[n, c, i - 1, j - 1], 0.0), name="x_pad")
    c, kh, kw = (te.reduce_axis((0, e), name) for e, name in ((8, "c"), (3, "kh"), (3, "kw")))
    y = te.compute((16, 16, 10, 10), lambda n, o, i, j: te.sum(
        xp[n, c, i + kh, j + kw] * w[o, c, kh, kw], axis=[c, kh, kw]), name="conv2d")
    target = resolve_target("x86:avx2")
    scheduled, rule = schedule_prim_func(te.create_prim_func([x, w, y, xp]), target)
    assert "conv2d=conv[" in rule and "padding skipped" not in rule, rule
    assert "x_pad" in _realizes(scheduled), sorted(_realizes(scheduled))
    rng = np.random.default_rng(5)
    xv = rng.standard_normal((16, 8, 10, 10)).astype("float32")
    wv = rng.standard_normal((16, 8, 3, 3)).astype("float32")
    out = to_device(np.full((16, 16, 10, 10), np.nan, "float32"))
    padded = to_device(np.zeros((16, 8, 12, 12), "float32"))
    compile_kernels(scheduled, target)["main"](to_device(xv), to_device(wv), out, padded)
    np.testing.assert_allclose(out.numpy(), _reference(xv, wv, 1, (1, 1)), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("derived", [False, True])
@pytest.mark.parametrize("schedule_for", ["x86:avx2", "x86:avx512"])
def test_same_size_weight_gradients_read_dy_without_its_border(derived, schedule_for):
    """A same-size stride-1 d/dw (conv_weight_grad) copies dy per image transposed but not
    padded (no zero fill), skips the terms over its border, and runs its rows and its steps of
    columns in three parts each (border, interior, border), a border step's columns one part
    each: 3 x 3 parts of its update on AVX2 (12 columns in steps of 1), 3 x (4 + 1 + 4) on
    AVX-512 (steps of 4), the largest over the 10 x 3 interior steps (10 x 10 on AVX2).
    Values as numpy's, run on this host where it has the ISA."""
    from tvmfront._tvm import llvm_host_cpu_features
    from test_conv_register_tiles import _block_names, _interior_part, _loops_around
    xs, ws = (8, 32, 12, 12), (64, 32, 3, 3)
    x, w = te.placeholder(xs, "float32", name="x"), te.placeholder(ws, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, padding=1)
    dy = te.placeholder(y.shape, "float32", name="dy")
    dw = ops.conv2d.te_grad(dy, x, w, padding=1, derived=derived)[1]
    target = resolve_target(schedule_for)
    scheduled, rule = schedule_prim_func(te.create_prim_func([dy, x, dw]), target)
    assert "=conv_dw[" in rule and "padding skipped" in rule, rule
    names = _block_names(scheduled)
    assert not [n for n in names if n.endswith("_pad_const") or "dy_t" in n or "dy_ext" in n], \
        sorted(names)
    update = "conv2d_dw1_update" if derived else "conv2d_dw_update"
    parts = [n for n in names if n.startswith(update) and
             not n.endswith(("_partition", "_common"))]
    assert len(parts) == (27 if schedule_for == "x86:avx512" else 9), sorted(names)
    interior = [e for _, e in _loops_around(scheduled, _interior_part(scheduled, update))]
    steps = 3 if schedule_for == "x86:avx512" else 10
    assert 10 in interior and steps in interior, (interior, rule)
    if schedule_for == "x86:avx512" and "avx512f" not in (llvm_host_cpu_features() or set()):
        return
    rng = np.random.default_rng(6)
    xv = rng.standard_normal(xs).astype("float32")
    dyv = rng.standard_normal([int(d) for d in y.shape]).astype("float32")
    got = to_device(np.full(ws, np.nan, "float32"))
    compile_kernels(scheduled, resolve_target("x86"))["main"](to_device(dyv), to_device(xv), got)
    _, want = _conv_grads_ref(xv, np.zeros(ws), dyv, 1, 1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("derived", [False, True])
def test_strided_weight_gradients_read_x_in_place(derived):
    """ResNet's 3x3 stride-2 16->32 @32 d/dw (_padded_weight_grad, AVX-512) reads x itself,
    no padded copy, the terms over its border skipped: its rows and its two steps of 8
    output columns each run in a border part (the first row's and column's first tap reads
    index -1), the border step's columns one part each, and the rest: 2 x (8 + 1) parts. A
    row of 7 columns, unrolled whole (b32 64->64 @14), keeps x padded per image (measured
    faster there). Values as numpy's where the host has AVX-512."""
    from tvmfront._tvm import llvm_host_cpu_features
    from test_conv_register_tiles import AVX512, _block_names
    rules = {}
    for xs, ws in (((64, 16, 32, 32), (32, 16, 3, 3)), ((32, 64, 14, 14), (64, 64, 3, 3))):
        x, w = te.placeholder(xs, "float32", name="x"), te.placeholder(ws, "float32", name="w")
        y = ops.conv2d.te_forward(x, w, stride=2, padding=1)
        dy = te.placeholder(y.shape, "float32", name="dy")
        dw = ops.conv2d.te_grad(dy, x, w, stride=2, padding=1, derived=derived)[1]
        rules[xs[-1]] = schedule_prim_func(te.create_prim_func([dy, x, dw]),
                                           resolve_target(AVX512))
    assert "x padded and dy_t per image, 7 columns unrolled]" in rules[14][1], rules[14][1]
    scheduled, rule = rules[32]
    assert "x in place and dy_t per image, 8 columns unrolled, padding skipped" in rule, rule
    names = _block_names(scheduled)
    assert not [n for n in names if "_pad" in n], sorted(names)
    update = "conv2d_dw1" if derived else "conv2d_dw_part"
    parts = [n for n in names if n.startswith(update + "_update") and
             not n.endswith(("_partition", "_common"))]
    assert len(parts) == 18, sorted(names)
    if "avx512f" not in (llvm_host_cpu_features() or set()):
        return
    rng = np.random.default_rng(8)
    xv = rng.standard_normal((64, 16, 32, 32)).astype("float32")
    dyv = rng.standard_normal((64, 32, 16, 16)).astype("float32")
    got = to_device(np.full((32, 16, 3, 3), np.nan, "float32"))
    compile_kernels(scheduled, resolve_target("x86"))["main"](to_device(dyv), to_device(xv), got)
    _, want = _conv_grads_ref(xv, np.zeros((32, 16, 3, 3)), dyv, 2, 1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=2e-2)


@pytest.mark.parametrize("derived", [False, True])
@pytest.mark.parametrize("schedule_for, xs, ws, padding, rule", [
    ("x86:avx512", (2, 8, 12, 12), (32, 8, 3, 5), (1, 2), "dy_t per image"),
    ("x86:avx512", (2, 8, 10, 10), (32, 8, 7, 7), (3, 3), "dy_t per image"),
    ("x86:avx2", (2, 8, 12, 12), (16, 8, 5, 5), (2, 2), "dy_t per image"),
    ("x86:avx512", (2, 8, 13, 13), (32, 8, 2, 2), (1, 2), "x in place"),
])
def test_weight_gradients_with_borders_of_several_steps_build(derived, schedule_for, xs, ws,
                                                             padding, rule):
    """Weight gradients whose skipped border spans several column steps, or a step's several
    unrolled columns (5x5 padded 2, 7x7 padded 3, 3x5 padded (1, 2), 2x2 padded (1, 2)):
    their border parts run one step and one column each, else TVM's LoopPartition split an
    unrolled tap loop at a bound set by the column and the build failed ('Cannot unroll
    non-constant loop', found by a random sweep of shapes). They build, and compute numpy's
    d/dw on this host where it has the ISA."""
    from tvmfront._tvm import llvm_host_cpu_features
    x, w = te.placeholder(xs, "float32", name="x"), te.placeholder(ws, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, padding=padding)
    dy = te.placeholder(y.shape, "float32", name="dy")
    dw = ops.conv2d.te_grad(dy, x, w, padding=padding, derived=derived)[1]
    scheduled, got_rule = schedule_prim_func(te.create_prim_func([dy, x, dw]),
                                             resolve_target(schedule_for))
    assert "=conv_dw[" in got_rule and rule in got_rule and "padding skipped" in got_rule, \
        got_rule
    host = resolve_target("x86")
    kernel = compile_kernels(scheduled, host)["main"]
    if schedule_for == "x86:avx512" and "avx512f" not in (llvm_host_cpu_features() or set()):
        return
    rng = np.random.default_rng(9)
    xv = rng.standard_normal(xs).astype("float32")
    dyv = rng.standard_normal([int(d) for d in y.shape]).astype("float32")
    got = to_device(np.full(ws, np.nan, "float32"))
    kernel(to_device(dyv), to_device(xv), got)
    _, want = _conv_grads_ref(xv, np.zeros(ws), dyv, 1, padding)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("target", ["x86", "x86:avx2"])
def test_a_train_step_with_a_3x5_conv_padded_1_2_builds_and_learns(target):
    """The same through a model: a train step with nn.Conv2d(8, 32, (3, 5), padding=(1, 2))
    compiled for this host and for AVX2 code failed to build before (its d/dw's border).
    Every kernel keeps its default schedule, and the loss on a fixed batch falls."""
    import tvmfront as tvf
    nn = tvf.nn
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 32, (3, 5), padding=(1, 2)), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 12 * 12, 10))
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(lr=0.01),
                                  inputs=(2, 8, 12, 12), labels=(2,), target=target,
                                  records=False)
    assert module.build_info["fallback_kernels"] == {}, module.build_info["fallback_kernels"]
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((2, 8, 12, 12)).astype("float32"), np.array([3, 7])
    losses = [float(module.step(x, y)) for _ in range(5)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
