"""Copy kernels (a derived gradient that is the incoming gradient itself) are elided before
fusion (tvmfront/identity_kernels.py): fewer kernels, the same numbers."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront._tvm import prim_func_type, te, tirx
from tvmfront.identity_kernels import is_identity_copy

from _lowering_stage import assert_same_steps, without_stage

nn = tvf.nn


class _Residual(nn.Module):
    """x + f(x) then a Linear: the add's d/dx and the bias adds' d/dx are copies that feed a
    GEMM, which FuseOps cannot absorb."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        return self.out(x + tvf.ops.relu(self.inner(x)))


def _model():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), _Residual())


def _compile(monkeypatch, with_stage, batch=6):
    without_stage(monkeypatch, "elide_identity_copies", with_stage)
    return tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.Adam(0.01),
                                inputs=(batch, 8), labels=(batch,))


def _kernels(module):
    return [f for f in module._lowered.functions.values() if isinstance(f, prim_func_type())]


def test_no_copy_kernel_is_left_and_the_step_has_fewer_kernels(monkeypatch):
    with_stage = _kernels(_compile(monkeypatch, True))
    without = _kernels(_compile(monkeypatch, False))
    assert any(is_identity_copy(f) for f in without)
    assert not any(is_identity_copy(f) for f in with_stage)
    assert len(with_stage) < len(without)


@pytest.mark.parametrize("batch", [6, "n"])
def test_the_steps_numbers_do_not_change(monkeypatch, batch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5 if batch == "n" else 6, 8)).astype("float32")
    y = np.arange(len(x)) % 4
    assert_same_steps(lambda with_stage: _compile(monkeypatch, with_stage, batch), x, y,
                      state_rtol=1e-6)


def _func(out_shape, body, in_shape=(4, 5), dtype="float32"):
    a = te.placeholder(in_shape, dtype, name="a")
    return te.create_prim_func([a, te.compute(out_shape, lambda *i: body(a, *i), name="out")])


@pytest.mark.parametrize("case, expected", [
    ("copy", True),
    ("symbolic copy", True),
    ("transpose", False),
    ("scaled", False),
    ("slice", False),
    ("cast", False),
    ("broadcast row", False),
])
def test_what_counts_as_a_copy(case, expected):
    n = tirx.Var("n", "int64")
    funcs = {
        "copy": lambda: _func((4, 5), lambda a, i, j: a[i, j]),
        "symbolic copy": lambda: _func((n, 5), lambda a, i, j: a[i, j], in_shape=(n, 5)),
        "transpose": lambda: _func((4, 4), lambda a, i, j: a[j, i], in_shape=(4, 4)),
        "scaled": lambda: _func((4, 5), lambda a, i, j: a[i, j] * 2),
        "slice": lambda: _func((2, 5), lambda a, i, j: a[i, j]),
        "cast": lambda: _func((4, 5), lambda a, i, j: a[i, j].astype("float64")),
        "broadcast row": lambda: _func((4, 5), lambda a, i, j: a[0, j], in_shape=(1, 5)),
    }
    assert is_identity_copy(funcs[case]()) is expected
