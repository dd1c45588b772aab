"""Kernels for AVX-512 targets are compiled to 512-bit vectors, if_then_else and isnan
selects included.

LLVM's Intel AVX-512 CPUs and x86-64-v4 prefer 256-bit vectors (the tuning flag
prefer-256-bit): a kernel with an if_then_else or an isnan select came out as ymm-only code,
half the width the schedules size their vectors for. build.codegen_target turns the flag off."""

import pytest

from _scheduled import schedule
from tvmfront import build
from tvmfront._tvm import te, tirx, tvm


def _select_kernel():
    # relu's gradient as the train step's kernel computes it (if_then_else; isnan selects in
    # fastmath do the same): LLVM compiled it to ymm only
    x = te.placeholder((64, 1024), "float32", name="x")
    dy = te.placeholder((64, 1024), "float32", name="dy")
    dx = te.compute(x.shape, lambda i, j: tirx.if_then_else(tirx.const(0, "float32") < x[i, j],
                                                             dy[i, j], tirx.const(0, "float32")),
                    name="relu_grad")
    return [x, dy], dx


def _asm(target, codegen):
    func, _, target = schedule(*_select_kernel(), target=target)
    with build.kernel_pass_context():
        lib = tvm.compile(func.with_attr("global_symbol", "k"), target=codegen(target))
    return lib.mod.inspect_source("asm")


@pytest.mark.parametrize("target", ["x86:avx512", {"kind": "llvm", "mcpu": "sapphirerapids",
                                                   "mtriple": "x86_64-linux-gnu"}])
def test_avx512_select_kernel_uses_zmm(target):
    asm = _asm(target, build.codegen_target)
    assert "zmm" in asm, "the AVX-512 kernel was compiled without 512-bit vectors"


def test_codegen_target_keeps_an_explicit_prefer_256_bit():
    from tvmfront.target import resolve_target

    mine = resolve_target({"kind": "llvm", "mcpu": "x86-64-v4", "mtriple": "x86_64-linux-gnu",
                           "mattr": ["+prefer-256-bit"]})
    assert list(build.codegen_target(mine).export()["mattr"]) == ["+prefer-256-bit"]
    avx2 = resolve_target("x86:avx2")
    assert "mattr" not in build.codegen_target(avx2).export()
