"""The compile cache: the same model, specs, target and records load the library built before."""

import os

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import build as build_mod
from tvmfront import cache

nn = tvf.nn
X = np.random.default_rng(0).standard_normal((8, 1, 6, 6)).astype("float32")
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1])


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMFRONT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TVMFRONT_CACHE", raising=False)
    return tmp_path / "cache"


def convnet():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


def compile_step(**kw):
    return tvf.compile_training(convnet(), nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                inputs=(8, 1, 6, 6), labels=(8,), records=False, **kw)


def _no_build(*args, **kwargs):
    raise AssertionError("a cache hit must not schedule or compile")


def test_a_second_build_loads_the_cached_library(cache_dir, monkeypatch):
    first = compile_step()
    assert first._build_info["cache"] == "miss"
    entries = os.listdir(cache_dir / "modules")
    assert len([e for e in entries if e.endswith(".so")]) == 1
    assert not [e for e in entries if e.startswith(".tmp-")]  # written atomically

    monkeypatch.setattr(build_mod, "compile_scheduled", _no_build)
    monkeypatch.setattr(build_mod, "schedule_lowered", _no_build)
    second = compile_step()
    assert second._build_info["cache"] == "hit"
    assert second._build_info["key"] == first._build_info["key"]
    losses = [(first.step(X, Y), second.step(X, Y)) for _ in range(3)]
    assert [a for a, _ in losses] == [b for _, b in losses]  # identical, step after step
    for name, p in first.state_dict().items():
        np.testing.assert_array_equal(p, second.state_dict()[name])



@pytest.mark.slow
def test_the_key_covers_target_specs_and_records(tmp_path, monkeypatch):
    base = compile_step()._build_info["key"]
    other_target = compile_step(target={"kind": "llvm", "num-cores": 1})._build_info["key"]
    other_specs = tvf.compile_training(convnet(), nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                       inputs=(4, 1, 6, 6), labels=(4,),
                                       records=False)._build_info["key"]
    other_opt = tvf.compile_training(convnet(), nn.CrossEntropyLoss(), tvf.optim.SGD(1e-2),
                                     inputs=(8, 1, 6, 6), labels=(8,),
                                     records=False)._build_info["key"]
    assert len({base, other_target, other_specs, other_opt}) == 4
    # the same program with another records digest is another entry
    lowered = compile_step()._lowered
    target = tvf.target.resolve_target("x86")
    assert cache.key(lowered, target, "") == base
    assert cache.key(lowered, target, "abc") != base


@pytest.mark.slow
def test_a_damaged_entry_is_rebuilt(cache_dir):
    first = compile_step()
    key = first._build_info["key"]
    lib = cache_dir / "modules" / f"{key}.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged = cache_dir / "damaged.so"  # a new file: the loaded library's pages stay intact
    damaged.write_bytes(bytes(data))
    os.replace(damaged, lib)
    again = compile_step()
    assert again._build_info["cache"] == "miss"  # the SHA-256 did not match: built anew
    assert again.step(X, Y) == first.step(X, Y)


def test_cached_modules_export_and_load(tmp_path):
    compile_step()
    module = compile_step()
    assert module._build_info["cache"] == "hit"
    module.step(X, Y)
    path = module.export(tmp_path / "bundle")
    loaded = tvf.load(path)
    assert loaded.step(X, Y) == module.step(X, Y)


@pytest.mark.slow
def test_cache_off(cache_dir, monkeypatch):
    monkeypatch.setenv("TVMFRONT_CACHE", "0")
    a, b = compile_step(), compile_step()
    assert a._build_info["cache"] == b._build_info["cache"] == "off"
    assert not cache_dir.exists()
    assert a.step(X, Y) == b.step(X, Y)


def test_dump_ir_always_builds(tmp_path, monkeypatch):
    compile_step()
    monkeypatch.setattr(build_mod, "compile_scheduled", _no_build)
    with pytest.raises(AssertionError, match="must not"):
        compile_step(dump_ir=str(tmp_path / "ir"))  # asks for the schedule stage's IR
