"""tvf.tune, the records store and the tvmfront CLI, on tiny models with budgets of a few trials
(one MetaSchedule batch takes ~5-10 s here: search, build, run)."""

import json
import os
import shutil
import textwrap

import numpy as np
import pytest

import tvmfront as tvf
from _tuning import _private_cache, mlp  # noqa: F401  (an autouse fixture)
from _tuning import store_without_verdicts as _store_without_verdicts
from tvmfront import cli, records
from tvmfront.errors import TvmfrontError
from tvmfront.records import RecordsWarning
from tvmfront.target import target_json, x86_class

nn = tvf.nn
KEY = records.store_key("x86")
X = np.random.default_rng(0).standard_normal((4, 16)).astype("float32")


def _files(folder):
    """{path: (size, mtime)} of every file under `folder` (to see that nothing wrote there)."""
    out = {}
    for d, _, files in os.walk(folder or os.devnull):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.join(d, f)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One tuning run (4 trials) into the user store (a fresh TVMFRONT_RECORDS); shared by the
    tests below."""
    root = tmp_path_factory.mktemp("schedules")
    module = tvf.compile_inference(mlp(), (4, 16), records=False)
    reference = module(X)
    shipped = _files(records.shipped_root())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVMFRONT_RECORDS", str(root))
        report = tvf.tune(module, budget=4, progress=False)  # no records=: the user store
    assert _files(records.shipped_root()) == shipped  # the git-tracked records: untouched
    return module, report, root, reference


def _retarget(folder, mcpu):
    """Rewrite every record (and the metadata) of a database folder as made for `mcpu`."""
    other = {"kind": "llvm", "mcpu": mcpu, "num-cores": 2}
    lines = [json.loads(line) for line in open(os.path.join(folder, records.RECORDS))]
    for rec in lines:
        rec[1][2] = dict(rec[1][2], mcpu=mcpu)
    with open(os.path.join(folder, records.RECORDS), "w") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in lines)
    meta_path = os.path.join(folder, records.META)
    meta = json.load(open(meta_path))
    meta.update(target_key=records.store_key(other), target=other)
    meta.pop("kernels", None)
    json.dump(meta, open(meta_path, "w"))


@pytest.mark.slow
def test_tune_writes_records_under_the_target_key(tuned):
    module, report, root, _ = tuned
    store = os.path.join(root, KEY)
    assert report.store == store and report.trials == 4
    assert sorted(f for f in os.listdir(store) if not f.startswith(".")) == [
        records.RECORDS, records.WORKLOADS, records.META]
    db = records.read(store)
    assert len(db) >= 1 and all(records.mean_seconds(r) for _, r in db.records)
    meta = json.load(open(os.path.join(store, records.META)))
    assert meta["target_key"] == KEY and meta["tvm_version"] == tvf._tvm.TVM_VERSION
    # tune timed each kernel with a record against its default schedule and kept a verdict,
    # stamped with today's default schedules, where the timings are above the noise
    timed = [k for k in report.kernels if k.tuned_us is not None and k.default_us is not None]
    assert timed
    for k in timed:
        verdict = records.judge(k.default_us, k.tuned_us)
        assert (k.hash in meta["kernels"]) == (verdict is not None), (k, meta["kernels"])
        if verdict is not None:
            v = meta["kernels"][k.hash]
            assert v["verdict"] == verdict and v["defaults"] == records.defaults_digest()
    assert module._records[0] == str(root)  # rebuilt from the store it wrote first
    tuned_kernels = [k for k in report.kernels if k.trials]
    assert tuned_kernels and all(k.default_us > 0 for k in report.kernels)
    assert "kernel" in str(report) and tuned_kernels[0].name in str(report)


@pytest.mark.slow
def test_tuned_module_gives_the_default_results(tuned, tmp_path):
    module, _, root, reference = tuned
    np.testing.assert_allclose(module(X), reference, rtol=1e-5, atol=1e-6)  # rebuilt in place
    applied = _store_without_verdicts(root, tmp_path / "all")
    rebuilt = tvf.compile_inference(mlp(), (4, 16), records=str(applied))
    assert rebuilt.build_info["tuned_kernels"] >= 1  # the records were applied
    np.testing.assert_allclose(rebuilt(X), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_records_of_another_target_are_never_applied(tuned, tmp_path):
    _, _, root, reference = tuned
    ours = _store_without_verdicts(root, tmp_path / "ours")
    # a CPU of another feature class than this machine's
    other_cpu = "haswell" if x86_class("x86") == "avx512" else "skylake-avx512"
    other_key = records.store_key({"kind": "llvm", "mcpu": other_cpu, "num-cores": 2})
    assert other_key != KEY
    other_root = tmp_path / "other"
    shutil.copytree(os.path.join(ours, KEY), other_root / other_key)
    _retarget(other_root / other_key, other_cpu)

    # a root with records only for another key: none apply, and the build says why
    with pytest.warns(RecordsWarning, match=f"none for this target {KEY}"):
        m = tvf.compile_inference(mlp(), (4, 16), records=str(other_root))
    assert m.build_info["tuned_kernels"] == 0 and m.build_info["records"] == []
    np.testing.assert_allclose(m(X), reference, rtol=1e-5, atol=1e-6)

    # the database folder given directly: its records carry the other target
    with pytest.warns(RecordsWarning, match="made for another target"):
        m = tvf.compile_inference(mlp(), (4, 16), records=str(other_root / other_key))
    assert m.build_info["tuned_kernels"] == 0
    np.testing.assert_allclose(m(X), reference, rtol=1e-5, atol=1e-6)

    # placed under our key by mistake: each record's own target still decides
    shutil.copytree(other_root / other_key, tmp_path / "misplaced" / KEY)
    with pytest.warns(RecordsWarning, match="made for another target"):
        m = tvf.compile_inference(mlp(), (4, 16), records=str(tmp_path / "misplaced"))
    assert m.build_info["tuned_kernels"] == 0


@pytest.mark.slow
def test_records_of_another_core_count_class_are_never_applied(tuned, tmp_path):
    _, _, root, reference = tuned
    ours = str(_store_without_verdicts(root, tmp_path / "ours"))
    here = target_json("x86")  # num-cores: this machine's cores, as the tuned module had
    assert tvf.compile_inference(mlp(), (4, 16), target=here,
                                 records=ours).build_info["tuned_kernels"] >= 1
    other = dict(here, **{"num-cores": 1 if records.core_class(here) != "1" else 2})
    with pytest.warns(RecordsWarning, match=f"none for this target {records.store_key(other)}"):
        m = tvf.compile_inference(mlp(), (4, 16), target=other, records=ours)
    assert m.build_info["tuned_kernels"] == 0
    np.testing.assert_allclose(m(X), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_corrupt_record_files_warn_and_fall_back_to_default_schedules(tuned, tmp_path):
    _, _, root, reference = tuned
    # not JSON: a truncated record file
    bad = _store_without_verdicts(root, tmp_path / "truncated")
    path = os.path.join(bad, KEY, records.RECORDS)
    text = open(path).read()
    open(path, "w").write(text[: len(text) // 2])
    with pytest.warns(RecordsWarning, match=f"corrupt tuning record file {path}"):
        m = tvf.compile_inference(mlp(), (4, 16), records=str(bad))
    assert m.build_info["tuned_kernels"] == 0
    np.testing.assert_allclose(m(X), reference, rtol=1e-5, atol=1e-6)

    # valid JSON, but a workload TVM cannot deserialize
    bad = _store_without_verdicts(root, tmp_path / "garbled")
    path = os.path.join(bad, KEY, records.WORKLOADS)
    rows = [json.loads(line) for line in open(path)]
    rows = [[h, "bm90IGEgd29ya2xvYWQ="] for h, _ in rows]
    open(path, "w").writelines(json.dumps(r) + "\n" for r in rows)
    with pytest.warns(RecordsWarning, match="corrupt tuning records"):
        m = tvf.compile_inference(mlp(), (4, 16), records=str(bad))
    assert m.build_info["tuned_kernels"] == 0
    np.testing.assert_allclose(m(X), reference, rtol=1e-5, atol=1e-6)


def test_merge_keeps_the_best_record_per_workload(tmp_path):
    trace = [[], []]
    target = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2, "keys": ["cpu"], "tag": ""}
    key = records.record_key(target)

    def rec(secs):
        return [trace, secs, target, []]

    dst = records.Database([("1", "a"), ("2", "b")],
                           [(0, rec([3e-6])), (0, rec([2e-6])), (1, rec([5e-6]))])
    src = records.Database([("3", "c"), ("2", "b")],
                           [(0, rec([1e-6])), (1, rec([4e-6])), (1, rec([1e10]))])
    records.write(tmp_path / "dst", dst, {"target_key": key})
    records.write(tmp_path / "src", src)
    assert records.merge(tmp_path / "src", tmp_path / "dst") == 2  # "2" improved, "3" is new
    merged = records.read(tmp_path / "dst")
    assert [h for h, _ in merged.workloads] == ["1", "2", "3"]  # old indices kept, new appended
    best = merged.best_seconds()
    assert best == {"1": 2e-6, "2": 4e-6, "3": 1e-6}
    assert len(merged) == 3  # one record per workload
    assert not [f for f in os.listdir(tmp_path / "dst") if f.endswith(".tmp")]
    # merging again changes nothing; a record of another target is not merged
    assert records.merge(tmp_path / "src", tmp_path / "dst") == 0
    other = dict(target, mcpu="skylake-avx512")
    records.write(tmp_path / "foreign", records.Database([("4", "d")], [(0, [trace, [1e-7], other,
                                                                            []])]))
    with pytest.warns(RecordsWarning, match="another target"):
        assert records.merge(tmp_path / "foreign", tmp_path / "dst") == 0
    assert "4" not in records.read(tmp_path / "dst").best_seconds()


@pytest.mark.slow
def test_ctrl_c_during_tuning_keeps_the_records(tmp_path):
    module = tvf.compile_inference(mlp(), (4, 16), records=False)
    heard = []

    def progress(p):
        heard.append(p)
        raise KeyboardInterrupt  # as if Ctrl-C arrived right after the first batch

    with pytest.raises(KeyboardInterrupt):
        tvf.tune(module, budget=8, batch_size=4, records=tmp_path, progress=progress)
    assert len(heard) == 1 and heard[0].trials == 4
    db = records.read(tmp_path / KEY)
    assert db is not None and len(db) >= 1  # the first batch's best is in the store
    assert not [f for f in os.listdir(tmp_path / KEY) if f.endswith(".tmp")]


@pytest.mark.slow
def test_time_budget_and_a_training_module(tmp_path):
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=(4, 8), labels=(4,), records=False)
    x = np.random.default_rng(1).standard_normal((4, 8)).astype("float32")
    y = np.array([0, 1, 2, 1])
    loss_before = module.loss(x, y)
    report = tvf.tune(module, budget=None, seconds=1, batch_size=2, records=tmp_path,
                      progress=False)
    assert report.stopped == "time" and 1 <= report.trials <= 2  # one batch, then time up
    # weights count calls in train_step (the other functions' calls count 1/50)
    assert sum(k.calls for k in report.kernels) >= 6
    assert all(k.calls >= 1 or k.other_calls >= 1 for k in report.kernels)
    assert all(k.weight == k.calls + 0.02 * k.other_calls for k in report.kernels)
    # the module runs the same program after its rebuild
    assert module.loss(x, y) == pytest.approx(loss_before, rel=1e-5)
    assert np.isfinite(module.step(x, y))


def test_tune_needs_a_compiled_module(tmp_path):
    module = tvf.compile_inference(mlp(), (4, 16), records=False)
    loaded = tvf.load(module.export(tmp_path / "bundle"))
    with pytest.raises(TvmfrontError, match="no IR to tune"):
        tvf.tune(loaded, budget=2)
    with pytest.raises(ValueError, match="budget"):
        tvf.tune(module, budget=None)


@pytest.mark.slow
def test_cli_tunes_the_modules_a_file_defines(tmp_path, capsys, monkeypatch):
    """Without --records (or TVMFRONT_RECORDS) the records go to ~/.cache/tvmfront/schedules."""
    for name in ("TVMFRONT_RECORDS", "TVMFRONT_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    shipped = _files(records.shipped_root())
    user = tmp_path / "model.py"
    user.write_text(textwrap.dedent("""
        import tvmfront as tvf

        def tvmfront_modules(target="x86"):
            tvf.manual_seed(0)
            model = tvf.nn.Sequential(tvf.nn.Linear(16, 32), tvf.nn.ReLU(), tvf.nn.Linear(32, 4))
            return {"infer": tvf.compile_inference(model, (4, 16), target=target)}

        if __name__ == "__main__":
            raise SystemExit("tvmfront tune imports the file; it does not run it as a script")
    """))
    rc = cli.main(["tune", str(user), "--target", "x86", "--budget", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "== infer: inference module" in out
    assert "default us" in out and "tuned us" in out  # the per-kernel table
    assert "end to end (forward, median): default" in out and "speedup" in out
    store = tmp_path / "home" / ".cache" / "tvmfront" / "schedules" / KEY
    assert f"records: {store}" in out
    assert records.read(store) is not None
    assert _files(records.shipped_root()) == shipped
