"""The compile cache: the same model, specs, target and records load the library built before."""

import hashlib
import json
import logging
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
    assert first.build_info["cache"] == "miss"
    entries = os.listdir(cache_dir / "modules")
    assert len([e for e in entries if e.endswith(".so")]) == 1
    assert not [e for e in entries if e.startswith(".tmp-")]  # written atomically
    assert first.build_info["fallback_kernels"] == {}  # every default schedule applied

    monkeypatch.setattr(build_mod, "compile_scheduled", _no_build)
    monkeypatch.setattr(build_mod, "schedule_lowered", _no_build)
    second = compile_step()
    assert second.build_info["cache"] == "hit"
    assert second.build_info["key"] == first.build_info["key"]
    losses = [(first.step(X, Y), second.step(X, Y)) for _ in range(3)]
    assert [a for a, _ in losses] == [b for _, b in losses]  # identical, step after step
    for name, p in first.state_dict().items():
        np.testing.assert_array_equal(p, second.state_dict()[name])



@pytest.mark.slow
def test_the_key_covers_target_specs_and_records(tmp_path, monkeypatch):
    base = compile_step().build_info["key"]
    other_target = compile_step(target={"kind": "llvm", "num-cores": 1}).build_info["key"]
    other_specs = tvf.compile_training(convnet(), nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                       inputs=(4, 1, 6, 6), labels=(4,),
                                       records=False).build_info["key"]
    other_opt = tvf.compile_training(convnet(), nn.CrossEntropyLoss(), tvf.optim.SGD(1e-2),
                                     inputs=(8, 1, 6, 6), labels=(8,),
                                     records=False).build_info["key"]
    assert len({base, other_target, other_specs, other_opt}) == 4
    # the same program with another records digest is another entry
    lowered = compile_step()._lowered
    target = tvf.target.resolve_target("x86")
    assert cache.key(lowered, target, "") == base
    assert cache.key(lowered, target, "abc") != base


def _library(cache_dir, key):
    meta = json.loads((cache_dir / "modules" / f"{key}.json").read_text())
    return cache_dir / "modules" / meta["library"]


def _replace(path, data):
    """Write a new file over `path` (a loaded library's pages stay intact)."""
    tmp = path.parent / "new.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.mark.slow
def test_a_damaged_entry_is_rebuilt(cache_dir, caplog):
    first = compile_step()
    key = first.build_info["key"]
    lib = _library(cache_dir, key)
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    _replace(lib, bytes(data))
    with caplog.at_level(logging.WARNING, "tvmfront"):
        again = compile_step()
    assert again.build_info["cache"] == "miss"  # the SHA-256 did not match: built anew
    assert [r.name for r in caplog.records] == ["tvmfront.cache"]
    assert key in caplog.text and "does not match its SHA-256" in caplog.text
    assert again.step(X, Y) == first.step(X, Y)
    assert compile_step().build_info["cache"] == "hit"  # the rebuilt entry is whole


@pytest.mark.parametrize("damage", ["not json", "no library", "missing library",
                                    "other library name"])
def test_damaged_metadata_is_a_logged_miss(cache_dir, caplog, damage):
    key = "ab" * 20
    path, data = cache.store(key, lambda p: open(p, "wb").write(b"library"), {"n": 1})
    meta_path = cache_dir / "modules" / f"{key}.json"
    meta = json.loads(meta_path.read_text())
    whole = dict(meta, n=2)
    if damage == "not json":
        meta_path.write_bytes(b"\xff{")
    elif damage == "no library":
        del meta["library"]
        meta_path.write_text(json.dumps(meta))
    elif damage == "missing library":
        os.unlink(path)
    else:
        meta["library"] = "../" + meta["library"]
        meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, "tvmfront"):
        assert cache.lookup(key) is None
    assert f"compile cache entry {key} is damaged" in caplog.text
    assert not os.listdir(cache_dir / "modules")  # removed: the next build writes it anew
    cache.store(key, lambda p: open(p, "wb").write(b"library"), {"n": 2})
    assert cache.lookup(key)[:2] == (b"library", whole)


@pytest.mark.slow
def test_a_cached_library_that_does_not_load_is_rebuilt(cache_dir, caplog):
    first = compile_step()
    key = first.build_info["key"]
    lib = _library(cache_dir, key)
    meta_path = cache_dir / "modules" / f"{key}.json"
    meta = json.loads(meta_path.read_text())
    # Bytes that match the metadata's SHA-256 but are no library (written by a broken tool).
    junk = b"not an ELF file"
    os.unlink(lib)
    name = cache._library_name(key, hashlib.sha256(junk).hexdigest())
    (cache_dir / "modules" / name).write_bytes(junk)
    meta.update(library=name, sha256=hashlib.sha256(junk).hexdigest())
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, "tvmfront"):
        again = compile_step()
    assert again.build_info["cache"] == "miss"
    assert f"compile cache entry {key}" in caplog.text and "did not load" in caplog.text
    assert again.step(X, Y) == first.step(X, Y)
    assert compile_step().build_info["cache"] == "hit"


def test_a_failed_export_is_logged_with_the_compiler_error(cache_dir, tmp_path, caplog,
                                                           monkeypatch):
    broken = tmp_path / "broken-g++"  # a toolchain that cannot link
    broken.write_text("#!/bin/sh\necho '/usr/bin/ld: cannot find -lbroken' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    with caplog.at_level(logging.WARNING, "tvmfront"):
        module = compile_step()
    info = module.build_info
    assert info["cache"] == "off" and "cannot find -lbroken" in info["export_error"]
    assert "exporting the compiled library failed" in caplog.text
    assert "cannot find -lbroken" in caplog.text
    assert not (cache_dir / "modules").exists() or not [
        n for n in os.listdir(cache_dir / "modules") if not n.startswith(".tmp-")]
    assert np.isfinite(module.step(X, Y))  # the in-memory executable runs


def test_cached_modules_export_and_load(tmp_path):
    compile_step()
    module = compile_step()
    assert module.build_info["cache"] == "hit"
    module.step(X, Y)
    path = module.export(tmp_path / "bundle")
    loaded = tvf.load(path)
    assert loaded.step(X, Y) == module.step(X, Y)


@pytest.mark.slow
def test_cache_off(cache_dir, monkeypatch):
    monkeypatch.setenv("TVMFRONT_CACHE", "0")
    a, b = compile_step(), compile_step()
    assert a.build_info["cache"] == b.build_info["cache"] == "off"
    assert not cache_dir.exists()
    assert a.step(X, Y) == b.step(X, Y)


def test_dump_ir_always_builds(tmp_path, monkeypatch):
    compile_step()
    monkeypatch.setattr(build_mod, "compile_scheduled", _no_build)
    with pytest.raises(AssertionError, match="must not"):
        compile_step(dump_ir=str(tmp_path / "ir"))  # asks for the schedule stage's IR


@pytest.mark.falls_back
def test_a_hit_reports_the_fallbacks_of_its_build(monkeypatch, caplog):
    from tvmfront import schedule as cpu_schedule

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(cpu_schedule.gemm, "_tile_reduction", broken)  # the key cannot see the patch
        built = compile_step().build_info
    assert built["cache"] == "miss" and built["fallback_kernels"]
    with caplog.at_level(logging.WARNING, "tvmfront"):
        hit = compile_step().build_info
    assert hit["cache"] == "hit" and hit["fallback_kernels"] == built["fallback_kernels"]
    assert f"{len(built['fallback_kernels'])} kernel(s)" in caplog.text
    assert all(k in caplog.text for k in built["fallback_kernels"])
