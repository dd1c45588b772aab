"""Kernels built in one LLVM module with the VM's shape functions keep their `noalias` compute
functions (tvmfront.build.vm_pipeline): without them LLVM keeps a GEMM's accumulators in
memory and a symbolic-batch step built in one piece ran 2.5x slower."""

import re

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import build as build_mod
from tvmfront._tvm import relax, tvm

nn = tvf.nn


def _step(monkeypatch):
    monkeypatch.setenv("TVMFRONT_CACHE", "0")
    monkeypatch.setattr(build_mod, "SPLIT_BUILD", False)  # every kernel in the main build
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                inputs=("batch", 8), labels=("batch",), records=False)


def _compute_functions(module):
    """{kernel: every pointer argument of its compute function is noalias} from the LLVM IR,
    and the names of the packed entry points."""
    llvm = [m for m in module._executable.mod.imports if m.kind == "llvm"]
    assert len(llvm) == 1
    ir = llvm[0].inspect_source("ll")
    compute = {}
    for name, line in re.findall(r"define internal [^@\n]*@(\w+)_compute_\((.*)", ir):
        pointers = re.findall(r"(?:^|, )ptr ([^,]*)", line)
        compute[name] = bool(pointers) and all("noalias" in p for p in pointers)
    entries = set(re.findall(r"define dllexport [^@\n]*@__tvm_ffi_(\w+)\(", ir))
    return compute, entries


def test_every_kernel_of_a_symbolic_step_built_in_one_piece_has_a_noalias_compute_function(
        monkeypatch):
    module = _step(monkeypatch)
    compute, entries = _compute_functions(module)
    assert any(name.startswith("shape_func") for name in entries)  # the case in question
    assert entries and set(compute) == entries and all(compute.values()), (entries, compute)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype("float32")
    assert np.isfinite(float(module.step(x, np.arange(5) % 4)))


def test_without_the_marking_the_kernels_lose_them(monkeypatch):
    """What the pipeline's last pass prevents (if TVM stops doing this, the pass can go)."""
    monkeypatch.setattr(build_mod, "vm_pipeline", relax.pipeline.default_build_pipeline)
    compute, entries = _compute_functions(_step(monkeypatch))
    assert not compute and entries


@pytest.mark.parametrize("params, marked", [(1, True), (2, False)])
def test_only_functions_of_one_buffer_are_marked(params, marked):
    from tvmfront._tvm import te

    bufs = [te.placeholder((4,), "int64", name=f"b{i}") for i in range(params - 1)]
    out = te.compute((4,), lambda i: sum((b[i] for b in bufs), tvm.tirx.const(1, "int64")),
                     name="out")
    func = te.create_prim_func(bufs + [out]).without_attr("tirx.noalias")
    mod = build_mod._noalias_single_buffer_funcs(tvm.IRModule({"f": func}), None)
    assert ("tirx.noalias" in (mod["f"].attrs or {})) is marked
