"""Kernel inputs no kernel reads are dropped before fusion (tvmfront/unread_inputs.py): the
train step's GEMMs then fuse with their bias adds, and the numbers do not change."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront._tvm import prim_func_type, te, tirx
from tvmfront.unread_inputs import _unread, _without_params

from _lowering_stage import assert_same_steps, without_stage

nn = tvf.nn


def _mlp():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))


def _compile(model, monkeypatch, with_stage, batch=6):
    without_stage(monkeypatch, "drop_unread_inputs", with_stage)
    return tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(0.01),
                                inputs=(batch, 8), labels=(batch,))


def _kernels(module):
    return {gv.name_hint: f for gv, f in module._lowered.functions.items()
            if isinstance(f, prim_func_type())}


def test_every_kernel_reads_every_input_and_gemms_fuse_their_bias(monkeypatch):
    module = _compile(_mlp(), monkeypatch, with_stage=True)
    kernels = _kernels(module)
    for name, func in kernels.items():
        outputs = 1  # every kernel here writes one tensor (its last parameter)
        assert not _unread(func, len(func.params) - outputs), name
    # the bias adds became the GEMMs' epilogues: no kernel of its own in the forward
    assert not [n for n in kernels if n.startswith("bias_add") and "grad" not in n], kernels
    before = _kernels(_compile(_mlp(), monkeypatch, with_stage=False))
    assert [n for n in before if n.startswith("bias_add") and "grad" not in n]
    assert len(kernels) < len(before)


@pytest.mark.parametrize("batch", [6, "n"])
def test_the_steps_numbers_do_not_change(monkeypatch, batch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 8)).astype("float32") if batch == "n" else \
        rng.standard_normal((6, 8)).astype("float32")
    y = np.arange(len(x)) % 4
    assert_same_steps(lambda with_stage: _compile(_mlp(), monkeypatch, with_stage, batch), x, y)


def test_a_symbolic_size_only_an_unread_input_defines_keeps_that_input():
    n, m = tirx.Var("n", "int64"), tirx.Var("m", "int64")
    a = te.placeholder((n, 4), name="a")
    b = te.placeholder((m, 4), name="b")
    out = te.compute((n, 4), lambda i, j: a[i, j] * 2, name="out")
    func = te.create_prim_func([a, b, out])
    assert _unread(func, 2) == [1]
    slim = _without_params(func, [1])  # m is not used by the body: b can go
    assert [p.name for p in slim.params] == ["a", "out"]

    sized = te.placeholder((n, 4), name="sized")
    count = te.compute((4,), lambda j: tirx.Cast("float32", n), name="count")
    func = te.create_prim_func([sized, count])
    assert _unread(func, 1) == [0]
    assert _without_params(func, [0]) is None  # n is defined by the unread input alone
