"""The records store and policy without tuning: keys, where records live and their read order,
verdicts, merge of databases and roots, the store lock. (Fuzzing: tests/test_records_fuzz.py.)

Records here are real ones (two kernels of the shipped LeNet records) made to look as if this
machine's target tuned them, or made-up ones where TVM never reads them."""

import errno
import json
import os
import shutil

import pytest

from tvmfront import records
from tvmfront.target import target_json, target_key
from tvmfront.tuning import policy, store

TARGET = target_json("x86")  # what a record made here stores: this machine's CPU, num-cores
KEY = records.store_key("x86")
TRACE = [[], []]


def rec(secs, target=None):
    return [TRACE, secs, target or TARGET, []]


def write_store(folder, rows, meta=None):
    """A database folder of made-up workloads: rows [(hash, seconds)]."""
    db = records.Database([(h, f"ir-{h}") for h, _ in rows],
                          [(i, rec([s])) for i, (_, s) in enumerate(rows)])
    records.write(folder, db, dict({"target_key": KEY}, **(meta or {})))
    return str(folder)


def chosen(selection):
    """{workload hash: seconds} a Selection applies."""
    return selection.db.best_seconds() if selection else {}


# ---- the key --------------------------------------------------------------------------------
@pytest.mark.parametrize("cores,cls", [(1, "1"), (2, "2"), (3, "2"), (4, "4"), (7, "4"),
                                       (8, "8"), (15, "8"), (16, "16+"), (96, "16+")])
def test_the_key_holds_the_core_count_class(cores, cls):
    t = dict(TARGET, **{"num-cores": cores})
    assert records.core_class(t) == cls
    assert records.store_key(t) == f"{target_key(t)}-cores{cls}"  # built on target_key


def test_the_key_of_a_gpu_has_no_core_class():
    assert records.store_key({"kind": "cuda", "arch": "sm_90"}) == \
        target_key({"kind": "cuda", "arch": "sm_90"})


def test_records_of_another_core_class_are_not_selected(tmp_path):
    write_store(tmp_path / "root" / KEY, [("a", 1e-6)])
    assert chosen(records.select(str(tmp_path / "root"), TARGET)) == {"a": 1e-6}
    eight = dict(TARGET, **{"num-cores": 8})
    assert records.store_key(eight) != KEY
    with pytest.warns(records.RecordsWarning, match=f"none for this target "
                                                    f"{records.store_key(eight)}"):
        assert not records.select(str(tmp_path / "root"), eight)
    # the same records placed under the 8-core key: each record's own target still decides
    shutil.copytree(tmp_path / "root" / KEY, tmp_path / "misplaced" / records.store_key(eight))
    with pytest.warns(records.RecordsWarning, match="made for another target"):
        assert not records.select(str(tmp_path / "misplaced"), eight)


# ---- where records live, read order ---------------------------------------------------------
def test_the_user_store_is_the_cache_unless_tvmfront_records_says(tmp_path, monkeypatch):
    monkeypatch.delenv("TVMFRONT_RECORDS", raising=False)
    monkeypatch.delenv("TVMFRONT_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert records.user_root() == str(tmp_path / ".cache" / "tvmfront" / "schedules")
    monkeypatch.setenv("TVMFRONT_RECORDS", str(tmp_path / "mine"))
    assert records.user_root() == str(tmp_path / "mine")
    # a build reads the user store, then the shipped records; never the other way round
    shipped = records.shipped_root()
    assert shipped is None or os.path.realpath(shipped) != os.path.realpath(records.user_root())
    assert records.sources(None)[0] == (str(tmp_path / "mine"), False)
    assert [p for p, _ in records.sources(None)[1:]] == ([shipped] if shipped else [])
    assert records.sources(False) == []
    assert records.sources(str(tmp_path / "x")) == [(str(tmp_path / "x"), True)]


def test_the_users_record_wins_over_the_shipped_one(tmp_path, monkeypatch):
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    write_store(user / KEY, [("a", 3e-6), ("b", 2e-6)])
    write_store(shipped / KEY, [("a", 1e-6), ("c", 5e-6)])  # faster, but not the user's
    monkeypatch.setenv("TVMFRONT_RECORDS", str(user))
    monkeypatch.setattr(policy, "shipped_root", lambda: str(shipped))
    selection = records.select(None, TARGET)
    assert chosen(selection) == {"a": 3e-6, "b": 2e-6, "c": 5e-6}
    assert selection.sources == [str(user / KEY), str(shipped / KEY)]
    # a list reads in its order as well; None inside it is the default order
    assert chosen(records.select([str(shipped), None], TARGET))["a"] == 1e-6
    # no user store yet: the shipped records alone, quietly
    monkeypatch.setenv("TVMFRONT_RECORDS", str(tmp_path / "none-yet"))
    assert chosen(records.select(None, TARGET)) == {"a": 1e-6, "c": 5e-6}


# ---- verdicts -------------------------------------------------------------------------------
def _verdict(default_us, tuned_us, record_us, defaults=None):
    return {"name": "k", "default_us": default_us, "tuned_us": tuned_us, "record_us": record_us,
            "defaults": defaults or records.defaults_digest()}


@pytest.mark.parametrize("verdict,applies", [
    (_verdict(10.0, 20.0, 1.0), False),                 # slower, judged against today's defaults
    (_verdict(10.0, 20.0, 1.0, defaults="0123"), True),  # judged against other default schedules
    (_verdict(10.0, 5.0, 1.0), True),                   # faster
    (_verdict(0.5, 1.5, 1.0), True),                    # both under the noise floor (2 us)
    (_verdict(100.0, 103.0, 1.0), True),                # within the noise (5 %)
    (_verdict(10.0, 20.0, 2.0), True),                  # measured with another record
    ("junk", True), ({"default_us": "x"}, True),
])
def test_verdicts_apply_only_while_they_hold(tmp_path, verdict, applies):
    write_store(tmp_path / "s", [("a", 1e-6)], {"kernels": {"a": verdict}})
    assert bool(records.select(str(tmp_path / "s"), TARGET)) == applies
    assert records.select(str(tmp_path / "s"), TARGET, every_record=True)  # tune re-measures


def test_the_defaults_digest_follows_the_default_schedule_code(tmp_path, monkeypatch):
    digest = records.defaults_digest()
    fake = tmp_path / "tvmfront"
    fake.mkdir()
    shutil.copytree(os.path.join(policy.PKG, "schedule"), fake / "schedule",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(policy, "PKG", str(fake))
    policy.defaults_digest.cache_clear()
    try:
        assert records.defaults_digest() == digest  # the same code, the same digest
        changed = fake / "schedule" / "gemm.py"
        changed.write_text(changed.read_text() + "\n# a new default rule\n")
        policy.defaults_digest.cache_clear()
        assert records.defaults_digest() != digest
    finally:
        policy.defaults_digest.cache_clear()


def test_kernel_results_keep_only_verdicts_above_the_noise(tmp_path):
    folder = write_store(tmp_path / "s", [("a", 1e-6), ("b", 1e-6), ("c", 1e-6)],
                         {"kernels": {"c": _verdict(10.0, 20.0, 1.0)}})
    records.set_kernel_results(folder, {
        "a": {"name": "a", "default_us": 10.0, "tuned_us": 30.0, "record_us": 1.0},
        "b": {"name": "b", "default_us": 0.008, "tuned_us": 0.03, "record_us": 1.0},  # ns scale
        "c": {"name": "c", "default_us": 50.0, "tuned_us": 50.5, "record_us": 1.0}})  # noise
    kernels = records.read(folder).meta["kernels"]
    assert set(kernels) == {"a"}  # b never judged; c's old verdict dropped, not kept stale
    assert kernels["a"]["verdict"] == "slower"
    assert kernels["a"]["defaults"] == records.defaults_digest()
    assert chosen(records.select(folder, TARGET)) == {"b": 1e-6, "c": 1e-6}


# ---- merge ----------------------------------------------------------------------------------
def test_merge_root_into_root_merges_each_key_into_the_same_key(tmp_path):
    """The reported defect: merge(rootA, rootB) returned 0 and wrote an empty database into
    rootB, which a later build read instead of rootB/<key>."""
    other = dict(TARGET, **{"num-cores": 8})
    other_key = records.store_key(other)
    write_store(tmp_path / "a" / KEY, [("x", 1e-6), ("y", 4e-6)])
    records.write(tmp_path / "a" / other_key, records.Database([("z", "ir")], [(0, rec([1e-6],
                                                                                     other))]))
    write_store(tmp_path / "b" / KEY, [("y", 2e-6)])
    assert records.merge(tmp_path / "a", tmp_path / "b") == 2  # x new under KEY, z new
    assert records.kind(tmp_path / "b") == "root"  # no database files in the root itself
    assert not records.is_database(tmp_path / "b")
    assert records.read(tmp_path / "b" / KEY).best_seconds() == {"y": 2e-6, "x": 1e-6}
    assert records.read(tmp_path / "b" / other_key).best_seconds() == {"z": 1e-6}
    assert chosen(records.select(str(tmp_path / "b"), TARGET)) == {"y": 2e-6, "x": 1e-6}
    # into a root that does not exist yet: it becomes one
    assert records.merge(tmp_path / "a", tmp_path / "new") == 3
    assert sorted(os.listdir(tmp_path / "new")) == sorted([KEY, other_key])


def test_merge_database_into_root_goes_under_its_key(tmp_path):
    write_store(tmp_path / "laptop", [("x", 1e-6)])
    write_store(tmp_path / "root" / KEY, [("y", 2e-6)])
    assert records.merge(tmp_path / "laptop", tmp_path / "root") == 1
    assert os.listdir(tmp_path / "root") == [KEY]
    assert records.read(tmp_path / "root" / KEY).best_seconds() == {"y": 2e-6, "x": 1e-6}


def test_another_targets_record_in_a_key_folder_does_not_hide_new_records(tmp_path):
    """A record of another key, copied into this key's folder, faster than what tuning found:
    it made the merge (tuning's save) keep nothing. It never applies here: the folder keeps
    this key's records, the files as they were kept aside."""
    other = dict(TARGET, mcpu="znver2")
    dst = tmp_path / "root" / KEY
    records.write(dst, records.Database([("x", "ir-x")], [(0, rec([1e-9], other))]),
                  {"target_key": KEY})
    write_store(tmp_path / "tuned", [("x", 2e-6)])
    with pytest.warns(records.RecordsWarning, match=r"1 tuning record\(s\) in .* were made for "
                                                    r"another target .*\.foreign-"):
        assert records.merge(tmp_path / "tuned", dst) == 1
    assert records.read(dst).best_seconds() == {"x": 2e-6}
    assert chosen(records.select(str(tmp_path / "root"), TARGET)) == {"x": 2e-6}
    aside = sorted(f for f in os.listdir(dst) if ".foreign-" in f)
    assert len(aside) == 3 and "1e-09" in (dst / next(
        f for f in aside if f.startswith(records.RECORDS))).read_text()


def test_a_merge_into_a_root_another_merge_is_making_waits_its_turn(tmp_path):
    """Two merges into one new root at once: the second saw the first's key folder holding
    only its .lock and called the root "neither a records database nor a root"."""
    write_store(tmp_path / "a" / KEY, [("x", 1e-6)])
    (tmp_path / "new" / KEY).mkdir(parents=True)
    (tmp_path / "new" / KEY / ".lock").write_text("")
    assert records.kind(tmp_path / "new") == "root"
    assert records.merge(tmp_path / "a", tmp_path / "new") == 1
    assert records.read(tmp_path / "new" / KEY).best_seconds() == {"x": 1e-6}


def test_merge_refuses_what_it_cannot_do(tmp_path):
    write_store(tmp_path / "root" / KEY, [("x", 1e-6)])
    write_store(tmp_path / "db", [("y", 1e-6)])
    with pytest.raises(records.RecordsError, match="merging would mix keys"):
        records.merge(tmp_path / "root", tmp_path / "db")
    with pytest.raises(records.RecordsError, match="does not exist"):
        records.merge(tmp_path / "missing", tmp_path / "db")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("not records")
    with pytest.raises(records.RecordsError,
                       match="is neither a records database .* nor a records root"):
        records.merge(tmp_path / "db", tmp_path / "home")
    with pytest.raises(records.RecordsError, match="neither"):
        records.merge(tmp_path / "home", tmp_path / "db")
    assert records.read(tmp_path / "db").best_seconds() == {"y": 1e-6}  # untouched


def test_a_lock_that_cannot_be_taken_is_an_error_naming_the_store(tmp_path, monkeypatch):
    import fcntl

    write_store(tmp_path / "src", [("x", 1e-6)])
    dst = write_store(tmp_path / "dst", [("y", 1e-6)])
    before = {f: open(os.path.join(dst, f), "rb").read() for f in os.listdir(dst)}

    def no_lock(f, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_lock)
    with pytest.raises(records.RecordsError, match=f"cannot lock the tuning records store {dst}"):
        records.merge(tmp_path / "src", dst)
    with pytest.raises(records.RecordsError, match="cannot lock"):
        records.set_kernel_results(dst, {"y": {"default_us": 1, "tuned_us": 9, "record_us": 1}})
    assert {f: open(os.path.join(dst, f), "rb").read() for f in os.listdir(dst)
            if f != ".lock"} == before


def test_a_corrupt_destination_is_moved_aside_and_the_merge_goes_on(tmp_path):
    write_store(tmp_path / "src", [("x", 1e-6)])
    dst = write_store(tmp_path / "dst", [("y", 1e-6)])
    with open(os.path.join(dst, records.RECORDS), "wb") as f:
        f.write(b"\xff\xfe not utf-8\n")
    with pytest.warns(records.RecordsWarning, match="moved aside"):
        assert records.merge(tmp_path / "src", dst) == 1
    assert records.read(dst).best_seconds() == {"x": 1e-6}
    assert [f for f in os.listdir(dst) if ".corrupt-" in f]


def test_store_files_hold_strict_json(tmp_path):
    """NaN and infinities are read as corrupt, so nothing written back is JSON TVM refuses."""
    folder = write_store(tmp_path / "s", [("x", 1e-6)])
    path = os.path.join(folder, records.RECORDS)
    for bad in ("NaN", "Infinity", "1e999"):
        line = json.dumps([0, rec([1e-6])]).replace("1e-06", bad)
        open(path, "w").write(line + "\n")
        with pytest.warns(records.RecordsWarning, match="corrupt"):
            assert records.read(folder) is None
    assert store.kind(tmp_path / "nothing") == "empty"
