"""Every kernel of a train step, as the default schedules build it, computes what the same
kernel unscheduled (TVM's naive loop nest) computes, on random inputs: a guard against
schedules that TVM lowers to wrong values (a derived stride-2 d/dx on AVX-512 did: off by 32,
and the LeNet that trained on it went to NaN) or that leave outputs unwritten (outputs start
as NaN here)."""

import importlib.util
import os
import re
import sys

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront._tvm import prim_func_type, tvm
from tvmfront.build import codegen_target, kernel_pass_context, schedule_lowered
from tvmfront.compile import lower_training
from tvmfront.target import resolve_target, target_key
from tvmfront.tuning import policy

nn = tvf.nn


def _lenet():
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10))


def _residual():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(),
                         nn.Linear(64, 10))


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _example(name):
    if EXAMPLES not in sys.path:
        sys.path.append(EXAMPLES)  # the examples' `from _common import ...`
    path = os.path.join(EXAMPLES, name + ".py")
    spec = importlib.util.spec_from_file_location("_fidelity_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resnet_digits():
    return _example("resnet_digits").make_model()


def _char_transformer():
    example = _example("char_transformer")
    return nn.CausalLM(**example.model_config(103))  # the pydoc text's vocabulary size


# (model, derived gradients, input spec, label spec, optimizer). The examples' workloads at
# their own shapes (the ResNet at batch 16, not 64: the unscheduled convolutions are slow)
CASES = {"lenet derived": (_lenet, True, (64, 1, 8, 8), (64,), None),
         "lenet explicit": (_lenet, False, (64, 1, 8, 8), (64,), None),
         "strided bn derived": (_residual, True, (16, 1, 9, 9), (16,), None),
         "strided bn explicit": (_residual, False, (16, 1, 9, 9), (16,), None),
         "resnet digits": (_resnet_digits, False, (16, 1, 32, 32), (16,),
                           lambda: _example("resnet_digits").make_optimizer()),
         "char transformer": (_char_transformer, False, tvf.TensorSpec((16, 64), "int64"),
                              tvf.TensorSpec((16, 64), "int64"),
                              lambda: _example("char_transformer").make_optimizer())}
# The AVX2 class's schedules (other vector widths, other tiles) run on every x86 host this
# suite runs on, AVX-512 ones too: each case is also built for it. ("x86" is this host.)
TARGETS = {"": "x86", " avx2": "x86:avx2"}


def _library(funcs, target):
    with kernel_pass_context():
        lib = tvm.compile(tvm.IRModule(funcs), target=codegen_target(target))
    return lib.jit() if hasattr(lib, "jit") else lib


def _arguments(func, written, rng):
    """Random float inputs, zero integer inputs (valid indices), NaN-filled float outputs."""
    out = []
    for param in func.params:
        shape, dtype = [int(s) for s in param.shape], str(param.dtype)
        if not dtype.startswith("float"):
            out.append(np.zeros(shape, dtype))
        elif param.name in written:
            out.append(np.full(shape, np.nan, dtype))
        else:
            out.append(rng.standard_normal(shape).astype(dtype))
    return out


@pytest.mark.parametrize("case", [pytest.param(c + t, marks=pytest.mark.slow) if CASES[c][4] or t
                                  else c for c in sorted(CASES) for t in TARGETS])
def test_scheduled_kernels_compute_what_the_unscheduled_ones_do(case):
    tag = next(t for t in sorted(TARGETS, key=len, reverse=True) if case.endswith(t))
    if tag and target_key(resolve_target(TARGETS[tag])) == target_key(resolve_target("x86")):
        pytest.skip(f"this host is of the {TARGETS[tag]} class: the host's case builds its "
                    f"schedules")
    build, derived, inputs, labels, optimizer = CASES[case[:len(case) - len(tag)]]
    tvf.manual_seed(0)
    # lowered alone: compile_training's build of the step (a third of the time) goes unused
    lowered = lower_training(build(), nn.CrossEntropyLoss(),
                             optimizer() if optimizer else tvf.optim.Adam(1e-3),
                             inputs=inputs, labels=labels, derived_gradients=derived)
    target = resolve_target(TARGETS[tag])
    scheduled, _ = schedule_lowered(lowered, target, policy.select(False, target))
    naive, tuned = {}, {}
    for gvar, func in lowered.functions.items():
        if isinstance(func, prim_func_type()) and all(
                isinstance(s, (int, tvm.tirx.IntImm)) for p in func.params for s in p.shape):
            naive[gvar.name_hint] = func.with_attr("global_symbol", gvar.name_hint)
            tuned[gvar.name_hint] = scheduled[gvar.name_hint].with_attr(
                "global_symbol", gvar.name_hint)
    assert len(naive) > 10
    libs = _library(naive, target), _library(tuned, target)
    rng = np.random.default_rng(0)
    wrong = {}
    for name, func in naive.items():
        written = set(re.findall(r"T\.writes\((\w+)\[", func.script()))
        args = _arguments(func, written, rng)
        results = []
        for lib in libs:
            dev = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
            lib[name](*dev)
            results.append([d.numpy() for d in dev])
        for k, param in enumerate(func.params):
            if param.name not in written or not str(param.dtype).startswith("float"):
                continue
            want, got = results[0][k], results[1][k]
            finite = np.abs(want[np.isfinite(want)])  # random inputs can overflow an exp
            scale = float(finite.max()) if finite.size else 1.0
            if np.isnan(got).sum() > np.isnan(want).sum() or not np.allclose(
                    got, want, rtol=1e-4, atol=1e-4 * max(scale, 1.0), equal_nan=True):
                wrong[f"{name}.{param.name}"] = float(np.nanmax(np.abs(got - want)))
    assert not wrong, wrong
