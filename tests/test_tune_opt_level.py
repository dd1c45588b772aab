"""Tuning times kernels compiled as module builds compile them: at build.LLVM_OPT_LEVEL (-O2),
not at TVM's LLVM default (-O3). A record judged at another opt level than builds run it was
judged on other code (the defect: candidates and verdict timings were built at -O3)."""

import json
import os

import numpy as np
import pytest

import tvmfront as tvf
from _tuning import _private_cache, mlp  # noqa: F401  (an autouse fixture)
from tvmfront import build, records
from tvmfront._tvm import prim_func_type, tvm
from tvmfront.tuning import measure


def _opt_levels_compiled(monkeypatch, fn):
    """The LLVM opt-level of every target tvm.compile is called with while fn() runs."""
    seen = []
    real = tvm.compile

    def spy(mod, target=None, **kw):
        seen.append(tvm.target.Target(target).attrs.get("opt-level"))
        return real(mod, target=target, **kw)

    monkeypatch.setattr(tvm._load(), "compile", spy)  # tvm: tvmfront._tvm's lazy module
    fn()
    monkeypatch.undo()
    return seen


def test_kernel_timings_compile_at_the_build_opt_level(monkeypatch):
    module = tvf.compile_inference(mlp(), (4, 16), records=False)
    names = {g.name_hint for g, f in module._lowered.functions.items()
             if isinstance(f, prim_func_type())}
    out = {}
    levels = _opt_levels_compiled(
        monkeypatch, lambda: out.update(measure.measure_kernels(module._lowered, module._target,
                                                                names, min_repeat_ms=1)))
    assert out, "no kernel was timed"
    assert levels and all(int(v) == build.LLVM_OPT_LEVEL for v in levels), levels


@pytest.mark.slow  # one tuning batch: ~10-30 s on 2 shared cores
def test_search_candidates_are_built_at_the_build_opt_level(tmp_path):
    """MetaSchedule's builder compiles a candidate for its task's target: the records a run
    stores carry that target, which must name the build's opt level."""
    module = tvf.compile_inference(mlp(), (4, 16), records=False)
    x = np.ones((4, 16), "float32")
    reference = module(x)
    report = tvf.tune(module, budget=2, records=tmp_path, progress=False)
    assert report.trials > 0
    path = os.path.join(tmp_path, records.store_key(module._target), records.RECORDS)
    targets = [json.loads(line)[1][2] for line in open(path) if line.strip()]
    assert targets and all(t.get("opt-level") == build.LLVM_OPT_LEVEL for t in targets), targets
    np.testing.assert_allclose(module(x), reference, rtol=1e-5, atol=1e-6)
