"""Every record-reading path survives any bytes in any file of a store: a warning naming the
file and a skip, never an exception, never a crash. (Before: a record file that was not UTF-8
crashed the build with UnicodeDecodeError from records.read.)

A seeded fuzzer damages one file of a real store (two kernels of the shipped records, made to
look tuned for this machine) per case: random bytes, truncation, bit flips, invalid UTF-8,
valid JSON of the wrong shape, huge numbers, NaN, deep nesting, junk targets, a directory in a
file's place. Then it reads the store every way tvmfront does: read, select (the root, the
folder, the default order), merge (from it, into it, root into root), tune's seeding, the
build's selection loaded as TVM's JSONDatabase, and a few whole builds.
A quick run (40 cases) goes with every test run, a longer one (400) with the slow tests;
TVMFRONT_FUZZ_CASES=N sets the longer one's count."""

import os
import random
import shutil
import warnings

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import records
from tvmfront.target import target_json
from tvmfront.tuning import policy
from tvmfront.tuning.run import _seed_work_dir

TARGET = target_json("x86")
KEY = records.store_key("x86")
SHIPPED = os.path.join(records.ROOT, "schedules", "x86_64-avx512-tvm0.27.0.post1-cores2")
LONG = int(os.environ.get("TVMFRONT_FUZZ_CASES", "400"))
FILES = (records.WORKLOADS, records.RECORDS, records.META)

WRONG_SHAPES = [
    "{}", "[]", "null", '"x"', "[1]", "[1, 2, 3]", '["a", 1]', "[true, [[], [1e-6], {}, []]]",
    "[-1, [[], [1e-6], {}, []]]", "[99, [[], [1e-6], {}, []]]", '[0, [[], "x", {}, []]]',
    "[0, [{}, [1e-6], [], {}]]", "[0, [[], [true], {}, []]]", "[0, [[], [], {}, []]]",
    '[0, [[], [1e-6], {"kind": 5}, []]]', '[0, [[], [1e-6], {"kind": "nope"}, []]]',
    '[0, [[], [1e-6], {"kind": "llvm", "num-cores": -3}, []]]',
    '[0, [[], [1e-6], {"kind": "llvm", "num-cores": "two"}, []]]',
    '[0, [[], [1e-6], {"kind": "llvm", "num-cores": 100000000000000000000000}, []]]',
    '[0, [[], [1e-6], {"kind": "llvm", "mtriple": "\\u0000junk"}, []]]',
    '[0, [[["Nonsense", [], [], []]], [1e-6], ' + '{"kind": "llvm", "num-cores": 2}, []]]',
    '["1", "not base64 !!"]', '["1", "AAAA"]', '["1", "/6MAAAAAAAB7fQ=="]', '[1, "x"]',
    '{"kernels": []}', '{"kernels": {"1": "junk"}}', '{"target_key": 5}', '{"tvm_version": null}',
    '{"kernels": {"1": {"default_us": "x", "tuned_us": [], "record_us": {}}}}',
    '"\\ud800"', '["\\ud800", "\\udfff"]',
]
NUMBERS = ["1" * 5000, "1e999", "-1e400", "NaN", "Infinity", "-Infinity", "1e-400",
           "100000000000000000000000000000", "-0", "0"]


def _base_store(folder):
    """Two real kernels of the shipped records, retargeted to this machine's key."""
    db = records.read(SHIPPED)
    smallest = sorted(range(len(db.workloads)), key=lambda w: len(db.workloads[w][1]))[:2]
    recs = [(smallest.index(w), [r[0], r[1], TARGET, r[3]]) for w, r in db.records
            if w in smallest]
    records.write(folder, records.Database([db.workloads[w] for w in smallest], recs),
                  dict(db.meta, target_key=KEY, target=TARGET))


def _mutate(rng, data):
    """Damaged bytes of a file, and what was done."""
    lines = data.split(b"\n")
    how = rng.randrange(11)
    if how == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(2048))), "random bytes"
    if how == 1:
        return data[:rng.randrange(len(data) + 1)], "truncated"
    if how == 2:
        out = bytearray(data)
        for _ in range(rng.randrange(1, 16)):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out), "bit flips"
    if how == 3:
        i = rng.randrange(len(data) + 1)
        return data[:i] + rng.choice([b"\xff", b"\xfe\xff", b"\xed\xa0\x80", b"\xc3", b"\x00"]) \
            + data[i:], "invalid UTF-8 / NUL"
    if how == 4:
        i = rng.randrange(len(lines))
        lines[i] = rng.choice(WRONG_SHAPES).encode()
        return b"\n".join(lines), "a line of the wrong shape"
    if how == 5:
        return rng.choice(WRONG_SHAPES).encode(), "a file of the wrong shape"
    if how == 6:
        text = data.decode("utf-8", "replace")
        for token in ("1e-06", "0.0", "2", "1"):
            if token in text:
                text = text.replace(token, rng.choice(NUMBERS), rng.randrange(1, 4))
                break
        return text.encode(), "huge or special numbers"
    if how == 7:
        depth = rng.choice([50, 5000, 200000])
        junk = "[" * depth + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" \
            + "}" * depth
        lines[rng.randrange(len(lines))] = junk.encode()
        return b"\n".join(lines), f"nesting {depth} deep"
    if how == 8:
        rng.shuffle(lines)
        return b"\n".join(lines + lines[:2]), "lines shuffled and repeated"
    if how == 9:
        return b"", "empty"
    return None, "a directory in the file's place"


def _damage(rng, folder):
    name = rng.choice(FILES)
    path = os.path.join(folder, name)
    data, how = _mutate(rng, open(path, "rb").read())
    os.unlink(path)
    if data is None:
        os.mkdir(path)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return f"{name}: {how}"


def _reads(root, folder, good, scratch, monkeypatch, tvm):
    """Every reading path over the damaged store; returns read(folder)."""
    db = records.read(folder)
    records.select(str(root), TARGET)
    records.select(folder, TARGET, every_record=True)
    monkeypatch.setenv("TVMFRONT_RECORDS", str(root))
    selection = records.select(None, TARGET)
    records.merge(folder, os.path.join(scratch, "from-damaged"))
    records.merge(good, folder)  # into the damaged store: moved aside if corrupt
    records.merge(root, os.path.join(scratch, "root-copy"))
    work = os.path.join(scratch, "work")
    os.makedirs(work)
    _seed_work_dir(work, folder, KEY)
    if tvm:
        with selection.database():  # what a build hands TVM
            pass
    return db


@pytest.mark.parametrize("cases,seed", [
    (40, 20261203), pytest.param(LONG, 1, marks=pytest.mark.slow)])
def test_every_reading_path_survives_any_bytes(tmp_path, monkeypatch, cases, seed):
    monkeypatch.setattr(policy, "shipped_root", lambda: None)
    rng = random.Random(seed)
    base = tmp_path / "base"
    _base_store(base / KEY)
    good = str(tmp_path / "good")
    shutil.copytree(base / KEY, good)
    skipped = 0
    for case in range(cases):
        root = tmp_path / f"case{case}"
        shutil.copytree(base, root)
        folder = str(root / KEY)
        what = _damage(rng, folder)
        scratch = tmp_path / f"scratch{case}"
        scratch.mkdir()
        with warnings.catch_warnings(record=True) as heard:
            warnings.simplefilter("always")
            try:
                db = _reads(root, folder, good, str(scratch), monkeypatch, tvm=case % 3 == 0)
            except Exception as err:  # noqa: BLE001 - the assertion names the case
                raise AssertionError(f"case {case} ({what}): {type(err).__name__}: {err}") \
                    from err
        ours = [w for w in heard if issubclass(w.category, records.RecordsWarning)]
        if db is None:
            skipped += 1
            assert ours, f"case {case} ({what}): skipped without a warning"
        # the store merged into is valid afterwards, whatever it held
        assert records.read(folder, warn=False) is not None, f"case {case} ({what})"
        shutil.rmtree(root)
        shutil.rmtree(scratch)
    assert skipped >= cases // 3  # most damage is caught as such (the rest stays valid JSON)


@pytest.mark.slow
def test_builds_survive_damaged_records(tmp_path, monkeypatch):
    """The whole build (select -> TVM JSONDatabase -> MetaScheduleApplyDatabase -> compile)
    on a few damaged stores: default schedules and the right answer."""
    monkeypatch.setattr(policy, "shipped_root", lambda: None)
    monkeypatch.setenv("TVMFRONT_CACHE", "0")
    rng = random.Random(7)
    tvf.manual_seed(0)
    model = tvf.nn.Sequential(tvf.nn.Linear(16, 8), tvf.nn.ReLU(), tvf.nn.Linear(8, 4))
    x = np.random.default_rng(0).standard_normal((4, 16)).astype("float32")
    reference = tvf.compile_inference(model, (4, 16), records=False)(x)
    for case in range(4):
        root = tmp_path / f"case{case}"
        _base_store(root / KEY)
        _damage(rng, str(root / KEY))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", records.RecordsWarning)
            module = tvf.compile_inference(model, (4, 16), records=str(root))
        np.testing.assert_allclose(module(x), reference, rtol=1e-5, atol=1e-6)
