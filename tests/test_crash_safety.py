"""Crash safety, measured: SIGKILL a process while it exports a bundle, merges tuning
records or saves a training checkpoint (the compile cache: tests/test_cache_crash.py);
afterwards the old or the new state loads, exactly, and nothing half-written does.

kill_at_random (tests/_crash.py) kills at random moments, most of them inside a write, and
counts where the kills landed and which state was seen (printed: pytest -s). kill_at_each_step
kills right after each filesystem call of one write in turn: the gaps between two renames are
microseconds wide, random kills do not find them.
"""

import collections
import os
import shutil

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import records
from tvmfront.errors import BundleError

from _crash import kill_at_each_step, kill_at_random

nn = tvf.nn
KILLS = 50
MIN_MID_WRITE = 10  # fewer kills inside a write would prove little
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schedules")


# ---- bundles ------------------------------------------------------------------------------------
def _bundle_state(module):
    return (module.step_count, module.state_dict(), module.optimizer_state())


def _same_state(a, b):
    return a[0] == b[0] and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a[1:], b[1:]))


class Bundles:
    """An exported bundle at `path` and two modules whose export gives its old or new state.
    Each write exports the state that is not on disk now, so every kill can tell them apart."""

    def __init__(self, folder):
        tvf.manual_seed(0)
        module = tvf.compile_training(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)),
                                      nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                      inputs=(4, 16), labels=(4,))
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((4, 16)).astype("float32"), np.arange(4) % 4
        module.step(x, y)
        self.folder, self.path = str(folder), os.path.join(str(folder), "bundle")
        module.export(self.path)
        self.modules = {"old": tvf.load(self.path), "new": tvf.load(self.path)}
        self.modules["new"].step(x, y)  # in the parent: a forked child must not run kernels
        self.states = {k: _bundle_state(m) for k, m in self.modules.items()}
        assert not _same_state(self.states["old"], self.states["new"])
        self.on_disk = "old"
        self.leftovers_seen = 0

    def write(self):
        self.modules["new" if self.on_disk == "old" else "old"].export(self.path)

    def check(self):
        """The bundle at path loads and is the old or the new state; a leftover temporary
        folder beside it either is refused by tvf.load or is itself a complete state."""
        self.on_disk = self.state_of(self.path)
        self.leftovers_seen = max(self.leftovers_seen, sum(self.leftovers().values()))
        return self.on_disk

    def leftovers(self):
        """{"<prefix> refused" or "<prefix> complete": count} of the folders beside the bundle:
        what tvf.load says of each (a complete one must be the old or the new state)."""
        out = collections.Counter()
        for name in os.listdir(self.folder):
            if name != "bundle":
                try:
                    self.state_of(os.path.join(self.folder, name))
                    out[f"{name.rsplit('-', 1)[0]}-* complete"] += 1
                except BundleError:
                    out[f"{name.rsplit('-', 1)[0]}-* refused"] += 1
        return out

    def state_of(self, path):
        state = _bundle_state(tvf.load(path))
        for label, expected in self.states.items():
            if _same_state(state, expected):
                return label
        raise AssertionError(f"{path} loads a state that is neither the old nor the new one "
                             f"(step {state[0]})")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return Bundles(tmp_path_factory.mktemp("crash-bundles"))


@pytest.mark.slow
def test_bundle_export_killed_at_random_leaves_old_or_new(bundles):
    counts = kill_at_random(bundles.write, bundles.check, n=KILLS, seed=9, name="bundle export",
                            min_mid_write=MIN_MID_WRITE)
    print(f"bundle export: temporary folders left beside the bundle: at most "
          f"{bundles.leftovers_seen} at once; at the end {dict(bundles.leftovers())}")
    assert counts["when:mid-write"] >= MIN_MID_WRITE, counts
    assert counts["state:old"] and counts["state:new"], counts
    # Each export removes what killed ones left: at most the last kill's folder remains.
    assert bundles.leftovers_seen <= 1, bundles.leftovers_seen
    bundles.write()  # a later export still works, whatever the kills left
    assert bundles.check() in ("old", "new")
    assert not bundles.leftovers(), bundles.leftovers()


def test_bundle_export_killed_after_each_step_leaves_old_or_new(bundles):
    seen = kill_at_each_step(bundles.write, bundles.check)
    assert {label for _, label in seen} == {"old", "new"}, seen


# ---- checkpoints ----------------------------------------------------------------------------------
class Checkpoints:
    """A checkpoint file at `path` and two trainers whose save gives its old or new state."""

    def __init__(self, folder, bundles):
        self.path = os.path.join(str(folder), "run.ckpt")
        self.trainers = {k: tvf.Trainer(m, progress=False) for k, m in bundles.modules.items()}
        self.states, self.bundle = bundles.states, bundles.path
        self.trainers["old"].save_checkpoint(self.path)
        self.on_disk = "old"
        self.folder = str(folder)

    def write(self):
        self.trainers["new" if self.on_disk == "old" else "old"].save_checkpoint(self.path)

    def check(self):
        """The checkpoint loads (into a fresh trainer) as exactly the old or the new state."""
        module = tvf.load(self.bundle)
        tvf.Trainer(module, progress=False).load_checkpoint(self.path)
        state = _bundle_state(module)
        for label, expected in self.states.items():
            if _same_state(state, expected):
                self.on_disk = label
                return label
        raise AssertionError(f"{self.path} holds neither the old nor the new state")

    def leftovers(self):
        return sorted(n for n in os.listdir(self.folder) if n != "run.ckpt")


@pytest.mark.slow
def test_checkpoint_save_killed_at_random_leaves_old_or_new(bundles, tmp_path_factory):
    ckpt = Checkpoints(tmp_path_factory.mktemp("crash-checkpoints"), bundles)
    # three saves per child: a save is short, so a kill lands inside one more often
    counts = kill_at_random(ckpt.write, ckpt.check, n=KILLS, seed=13, repeat=3,
                            name="checkpoint save", min_mid_write=MIN_MID_WRITE)
    print(f"checkpoint save: leftover temporary files at the end: {len(ckpt.leftovers())}")
    assert counts["when:mid-write"] >= MIN_MID_WRITE, counts
    assert counts["state:old"] and counts["state:new"], counts


def test_checkpoint_save_killed_after_each_step_leaves_old_or_new(bundles, tmp_path_factory):
    ckpt = Checkpoints(tmp_path_factory.mktemp("crash-checkpoints-steps"), bundles)
    seen = kill_at_each_step(ckpt.write, ckpt.check)
    assert {label for _, label in seen} == {"old", "new"}, seen


# ---- tuning records -------------------------------------------------------------------------------
def _records_state(folder):
    """What a build gets from the database folder: {workload hash: record} and the metadata
    (but the time of the last merge). Asserts it reads, and reads consistently."""
    db = records.read(folder)
    assert db is not None, f"records.read({folder}) gives None: a file is half-written or corrupt"
    hashes = [h for h, _ in db.workloads]
    assert len(hashes) == len(set(hashes)), "a workload appears twice"
    return ({db.workloads[w][0]: rec for w, rec in db.records},
            {k: v for k, v in db.meta.items() if k != "updated"})


class Stores:
    """A store `dst` (database folder) holding records of the shipped schedules, and a
    tuning database `src` with faster records for some of its workloads and new workloads.
    Each write merges src into dst; each check puts dst back to the old state."""

    def __init__(self, folder, unrecorded_first=False):
        folders = sorted(f for f in os.listdir(SHIPPED) if records.is_database(f"{SHIPPED}/{f}"))
        shipped = records.read(os.path.join(SHIPPED, folders[0]))
        assert shipped is not None
        ws, recs = shipped.workloads, dict(shipped.records)
        # the workloads with a record (pruning keeps the others' workload entries)
        ids = sorted(recs)
        # kept, tuned and both: at least 2 each (records check prunes the shipped store)
        assert len(ids) >= 6, f"the shipped store keeps {len(ids)} records; these tests need 6"
        n = len(ids)
        keep, tuned = ids[:n - 3], ids[n // 2:]
        self.folder = str(folder)
        self.dst, self.src = os.path.join(self.folder, "store"), os.path.join(self.folder, "tuned")
        kept = [(i, recs[w]) for i, w in enumerate(keep)]
        if unrecorded_first:  # as MetaSchedule keeps a kernel whose every candidate failed
            kept[0] = (0, [kept[0][1][0], [1e10], *kept[0][1][2:]])
        self.old_db = records.Database([ws[w] for w in keep], kept)
        faster = [[r[0], [s / 2 for s in r[1]], *r[2:]] for r in (recs[w] for w in tuned)]
        records.write(self.src, records.Database([ws[w] for w in tuned], enumerate(faster)))
        # The store's metadata as a merge writes it, so that a merge changes only its time.
        first = os.path.join(self.folder, "first")
        records.merge(self.src, first)
        self.meta = {k: v for k, v in records.read(first).meta.items() if k != "updated"}
        self.reset()
        self.old = _records_state(self.dst)
        scratch = os.path.join(self.folder, "scratch")
        shutil.copytree(self.dst, scratch)
        assert records.merge(self.src, scratch) == len(tuned)
        self.new = _records_state(scratch)
        assert self.old != self.new

    def reset(self):
        records.write(self.dst, self.old_db, self.meta)

    def write(self):
        records.merge(self.src, self.dst)

    def check(self):
        """dst reads as the old or the merged state; a merge after the kill gives the merged
        state; then dst is put back to the old state for the next kill."""
        state = _records_state(self.dst)
        assert state in (self.old, self.new), "the store is neither the old nor the merged one"
        self.write()
        assert _records_state(self.dst) == self.new, "a merge after the kill went wrong"
        self.reset()
        return "old" if state == self.old else "new"

    def leftovers(self):
        return sorted(n for n in os.listdir(self.dst) if n.endswith(".tmp"))


@pytest.mark.slow
def test_records_merge_killed_at_random_leaves_old_or_merged(tmp_path):
    stores = Stores(tmp_path)
    counts = kill_at_random(stores.write, stores.check, n=KILLS, seed=11, name="records merge",
                            min_mid_write=MIN_MID_WRITE)
    print(f"records merge: leftover temporary files in the store at the end: "
          f"{len(stores.leftovers())}")
    assert not stores.leftovers()  # each merge removes what killed ones left
    assert counts["when:mid-write"] >= MIN_MID_WRITE, counts
    assert counts["state:old"] and counts["state:new"], counts


def test_records_merge_killed_after_each_step_leaves_old_or_merged(tmp_path):
    stores = Stores(tmp_path)
    seen = kill_at_each_step(stores.write, stores.check)
    assert {label for _, label in seen} == {"old", "new"}, seen


def test_merge_into_a_database_with_an_unrecorded_workload_killed_after_each_step(tmp_path):
    stores = Stores(tmp_path, unrecorded_first=True)
    seen = kill_at_each_step(stores.write, stores.check)
    assert {label for _, label in seen} == {"old", "new"}, seen
