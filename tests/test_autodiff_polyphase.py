"""Derived gradients of strided windows, per input phase (autodiff._polyphase_adjoint): a
stride-2 3x3 convolution's derived d/dx is four parts, one per (row, column) phase of the
input, each summing only its own taps with no guard in its loop, interleaved into dx; the
values are the explicit gradient's. And the interleave, read one column on once the padding's
crop is inlined (part[(i + 1) // 2]), is vectorized by the schedule, not left to LLVM's
gathers."""

import numpy as np
import pytest

from tvmfront import ops
from tvmfront import schedule as cpu_schedule
from tvmfront._tvm import te, to_device, tvm
from tvmfront.target import resolve_target


def _walk(t, seen):
    if t.op.name in seen:
        return
    seen[t.op.name] = t
    for parent in getattr(t.op, "input_tensors", []):
        _walk(parent, seen)


def _dx(derived, stride, padding, shape=(2, 4, 8, 8), kernel=3):
    x = te.placeholder(shape, name="x")
    w = te.placeholder((6, shape[1], kernel, kernel), name="w")
    out = ops.conv2d.te_forward(x, w, stride=stride, padding=padding)
    dy = te.placeholder([int(d) for d in out.shape], name="dy")
    return [dy, x, w], ops.conv2d.te_grad(dy, x, w, derived=derived, stride=stride,
                                          padding=padding)[0]


@pytest.mark.parametrize("padding", [0, 1])
def test_a_strided_convolution_s_derived_dx_is_summed_per_phase(padding):
    inputs, dx = _dx(True, 2, padding)
    stages = {}
    _walk(dx, stages)
    parts = sorted(n for n in stages if n[-4:-2] == "_p" and n[-2:].isdigit())
    assert len(parts) == 4, sorted(stages)  # phases (0, 0), (0, 1), (1, 0), (1, 1)
    taps = []
    for name in parts:
        body = stages[name].op.body[0]
        assert type(body).__name__ == "Reduce", name
        # each part sums exactly its taps (2 or 1 per axis of a 3x3 kernel at stride 2: a
        # phase of one tap has no axis for it) over the 6 output channels, and no test of the
        # tap's range is left in the summed term
        assert "if_then_else" not in str(body.source[0]), (name, body)
        extents = [int(ax.dom.extent) for ax in body.axis]
        assert extents[0] == 6, (name, extents)
        taps.append(int(np.prod(extents[1:])))
    assert sorted(taps) == [1, 2, 2, 4]  # the kernel's 9 taps, each in one phase


@pytest.mark.parametrize("padding", [1, 2])
def test_a_padded_strided_convolution_s_derived_dx_sums_the_input_s_elements_only(padding):
    # The padding's adjoint, a crop, reads the phases of the padded input's gradient at an
    # offset: it gets parts of its own, of the input's size over the stride (4x4 for 8x8;
    # the padded input's would be 5x5 or 6x6). The padding's gradient is never summed:
    # ResNet's stride-2 3x3 d/dx summed phases of 8x8 for a 14x14 input (1.31x the products).
    inputs, dx = _dx(True, 2, padding)
    stages = {}
    _walk(dx, stages)
    parts = {n: t for n, t in stages.items() if n[-4:-2] == "_p" and n[-2:].isdigit()}
    assert sorted(parts) == [f"{dx.op.name}_p{a}{b}" for a in (0, 1) for b in (0, 1)], \
        sorted(stages)
    for name, part in parts.items():
        assert [int(d) for d in part.shape] == [2, 4, 4, 4], name
        assert type(part.op.body[0]).__name__ == "Reduce", name
    # one pass interleaves them into dx: no stage of the padded input's size is left
    assert not [n for n, t in stages.items() if [int(d) for d in t.shape][-1] == 8 + 2 * padding]
    # and the parts read one zero-extended dy, sized for all of them (each its own: three
    # copies of dy per call at padding 1); at padding 2 every read of dy is in its range
    exts = [n for n in stages if n.endswith("_dy_ext")]
    assert exts == ([f"{dx.op.name}_dy_ext"] if padding == 1 else []), sorted(stages)


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
@pytest.mark.parametrize("stride, padding, shape", [(2, 1, (2, 4, 8, 8)), (2, 0, (2, 4, 8, 8)),
                                                     (3, 1, (2, 4, 9, 9)), (2, 1, (2, 4, 7, 7)),
                                                     (2, 2, (2, 4, 8, 8)),
                                                     (3, 1, (2, 4, 10, 10))])
def test_per_phase_derived_dx_equals_the_explicit_one(stride, padding, shape, name):
    # (7, 7) at stride 2: the phases would differ in size, so the single-tensor form is kept;
    # (10, 10) at stride 3, padding 1: phases of the padded 12x12, the crop a pass of its own
    # (10 is no multiple of 3); padding 2: the crop's parts read the padded ones a row on
    target = resolve_target(name)
    got = []
    for derived in (True, False):
        inputs, dx = _dx(derived, stride, padding, shape)
        func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [dx]), target)
        if derived and stride == 2 and padding == 1 and shape[-1] == 8:
            # the interleave of the parts: its columns vectorized
            assert "conv2d_pad_dx0=spatial[split 2x2, unrolled, v" in rule, rule
        lib = tvm.compile(func, target=target)
        args = [np.random.default_rng(1).standard_normal([int(d) for d in t.shape])
                .astype("float32") for t in inputs]
        out = tvm.runtime.empty(shape, "float32", tvm.cpu())
        lib(*[to_device(a) for a in args], out)
        got.append(out.numpy())
    np.testing.assert_allclose(got[0], got[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
def test_a_1x1_stride_2_derived_dx_sums_one_phase_and_zeros_the_others(name):
    # x read at 2 * i: only inputs of phase (0, 0) get a gradient. Before, one tensor summed
    # over the output channels for every input, tested j % 2 == 0 inside the sum (ResNet's
    # 1x1 16->32 @32 projection: backward 5.0x its forward, now 2.4x on one AVX-512 core).
    inputs, dx = _dx(True, 2, 0, kernel=1)
    stages = {}
    _walk(dx, stages)
    parts = {n: stages[n].op.body[0] for n in stages if n[-4:-2] == "_p"}
    want = [f"{dx.op.name}_p{a}{b}" for a in (0, 1) for b in (0, 1)]
    assert sorted(parts) == want, sorted(stages)
    assert type(parts[f"{dx.op.name}_p00"]).__name__ == "Reduce"
    for phase in ("p01", "p10", "p11"):  # no read lands there: a constant, no sum
        body = parts[f"{dx.op.name}_{phase}"]
        assert type(body).__name__ == "FloatImm" and body.value == 0.0, (phase, body)
    target = resolve_target(name)
    got = []
    for derived in (True, False):
        inputs, grad = _dx(derived, 2, 0, kernel=1)
        func, _ = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [grad]), target)
        lib = tvm.compile(func, target=target)
        args = [np.random.default_rng(2).standard_normal([int(d) for d in t.shape])
                .astype("float32") for t in inputs]
        out = tvm.runtime.empty((2, 4, 8, 8), "float32", tvm.cpu())
        lib(*[to_device(a) for a in args], out)
        got.append(out.numpy())
    np.testing.assert_allclose(got[0], got[1], rtol=1e-5, atol=1e-5)
    assert np.all(got[0][:, :, 1::2, :] == 0) and np.all(got[0][:, :, :, 1::2] == 0)
