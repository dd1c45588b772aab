"""A cold compile schedules the side kernels a chunk at a time while threads generate the code
of the chunks before (build._compile_streamed), at LLVM_OPT_LEVEL: it builds what the
module-wide path (schedule everything, then compile) builds, bit for bit."""

import numpy as np

import tvmfront as tvf
from tvmfront import build as build_mod
from tvmfront import split_build

nn = tvf.nn


def _model():
    tvf.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10))


def _step(tmp_path, name, monkeypatch):
    monkeypatch.setenv("TVMFRONT_CACHE_DIR", str(tmp_path / name))
    module = tvf.compile_training(_model(), tvf.nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                  inputs=(8, 1, 8, 8), labels=(8,), records=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 8, 8)).astype("float32")
    y = rng.integers(0, 10, 8)
    losses = [module.step(x, y) for _ in range(3)]
    return module, losses, module.predict(x)


def test_streamed_build_matches_the_module_wide_build(tmp_path, monkeypatch):
    events = []
    add, schedule = split_build.SideBuild.add, build_mod.schedule_lowered
    monkeypatch.setattr(split_build.SideBuild, "add",
                        lambda self, mod: events.append("add") or add(self, mod))
    monkeypatch.setattr(build_mod, "schedule_lowered",
                        lambda *a, **k: events.append("module-wide") or schedule(*a, **k))
    streamed, s_losses, s_out = _step(tmp_path, "streamed", monkeypatch)
    assert events and set(events) == {"add"}  # chunks handed on one by one, nothing else
    assert streamed.build_info["cache"] == "miss"
    assert streamed.build_info["fallback_kernels"] == {}
    events.clear()
    monkeypatch.setattr(build_mod, "_compile_streamed", lambda *args: None)
    whole, w_losses, w_out = _step(tmp_path, "whole", monkeypatch)
    assert "module-wide" in events
    assert s_losses == w_losses
    np.testing.assert_array_equal(s_out, w_out)
    for (n, a), b in zip(streamed.state_dict().items(), whole.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=n)
    assert streamed.build_info["key"] == whole.build_info["key"]


def test_a_failing_streamed_build_falls_back(tmp_path, monkeypatch, caplog):
    calls, add = [], split_build.SideBuild.add

    def boom(self, mod):  # the streamed build's first chunk fails; later builds work
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("chunk refused")
        return add(self, mod)

    monkeypatch.setattr(split_build.SideBuild, "add", boom)
    module, losses, _ = _step(tmp_path, "fail", monkeypatch)
    assert calls and "chunk refused" in caplog.text
    assert module.build_info["cache"] == "miss" and np.isfinite(losses).all()


def test_codegen_target_sets_the_opt_level_only_where_unset():
    from tvmfront._tvm import tvm
    from tvmfront.target import resolve_target

    cpu = resolve_target("x86")
    assert "opt-level" not in cpu.export()
    assert build_mod.codegen_target(cpu).export()["opt-level"] == build_mod.LLVM_OPT_LEVEL
    mine = tvm.target.Target(dict(cpu.export(), **{"opt-level": 3}))
    assert build_mod.codegen_target(mine).export()["opt-level"] == 3
    cuda = tvm.target.Target("cuda")
    assert build_mod.codegen_target(cuda) is cuda
