"""The tuning records shipped in the repository's schedules/ folder.

1. Every shipped folder reads without warnings, and every record in it was made for a target
   with the folder's store key (so a build reading ``schedules/<its key>`` applies all of them).
2. They are selected for any CPU of their feature class at their core-count class, and never
   at another core count.
3. On a machine of their feature class, they apply to the LeNet train step of
   examples/lenet_digits.py (the README's main command), also when LLVM names this CPU
   differently from the machine that tuned them (the key is the feature class, not the model),
   built at the core count they were tuned at; at another core count they do not.
4. Every example module whose records the store keeps ("modules" in its metadata, written by
   ``tvmfront records check --prune``) replays them on a machine of the folder's class: built
   with the shipped records it schedules kernels from them, and computes what the default
   schedules compute.
"""

import importlib.util
import os
import warnings

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import records
from tvmfront.tuning import verify
from tvmfront.target import target_json, x86_class

SHIPPED = os.path.join(records.ROOT, "schedules")
EXAMPLE = os.path.join(records.ROOT, "examples", "lenet_digits.py")


def _folders():
    if not os.path.isdir(SHIPPED):
        return []
    return sorted(d for d in os.listdir(SHIPPED) if records.is_database(os.path.join(SHIPPED, d)))


def _read_quietly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a corrupt or foreign record file fails the test
        return records.read(path)


def test_records_are_shipped():
    assert _folders(), f"no tuning records in {SHIPPED}"


@pytest.mark.parametrize("folder", _folders())
def test_every_shipped_record_carries_its_folder_key(folder):
    db = _read_quietly(os.path.join(SHIPPED, folder))
    assert db is not None and len(db) > 0
    assert db.meta["target_key"] == folder
    assert records.store_key(db.meta["target"]) == folder
    for _, rec in db.records:
        assert records.record_key(rec[2]) == folder, rec[2]
        assert records.mean_seconds(rec) is not None  # the store keeps measured records only
    assert len(db.best()) == len(db)  # one record per kernel


def _tuned_at(folder):
    """The target the folder's records were tuned for: its feature class and core count."""
    return records.read(os.path.join(SHIPPED, folder)).meta["target"]


@pytest.mark.parametrize("folder", _folders())
def test_shipped_records_are_selected_at_their_core_class_only(folder):
    tuned = _tuned_at(folder)
    same_class = tuned
    if x86_class(tuned) == "avx512":  # another CPU model of the class, same core count
        model = "skylake-avx512" if tuned.get("mcpu") != "skylake-avx512" else "icelake-server"
        same_class = dict(tuned, mcpu=model)
    assert records.store_key(same_class) == folder
    selection = records.select(SHIPPED, same_class)
    assert selection and selection.sources == [os.path.join(SHIPPED, folder)]
    assert len(selection.hashes()) == len(records.read(os.path.join(SHIPPED, folder)).best())
    more_cores = dict(tuned, **{"num-cores": 8 * int(tuned["num-cores"])})
    with pytest.warns(records.RecordsWarning, match="none for this target"):
        assert not records.select(SHIPPED, more_cores)


def _kept_modules(folder):
    """{example file: [module names]} whose records the folder keeps."""
    kept = {}
    for label, m in (records.read(os.path.join(SHIPPED, folder)).meta.get("modules") or {}).items():
        if m.get("kept"):
            example, name = label.split(":")
            kept.setdefault(example, []).append(name)
    return kept


def _batch(spec, rng):
    """Random data of a manifest's {shape, dtype}: small valid indices for integer inputs."""
    if np.dtype(spec["dtype"]).kind in "iu":
        return rng.integers(0, 2, spec["shape"]).astype(spec["dtype"])
    return rng.standard_normal(spec["shape"]).astype(spec["dtype"])


def _same_outputs(module, other, seed=0):
    """One call of each (a train step at lr 0.01 on the same random batch, or a forward):
    the losses / outputs they give."""
    rng = np.random.default_rng(seed)
    x = _batch(module.manifest["inputs"], rng)
    if module.kind == "training":
        y = _batch(module.manifest["labels"], rng)
        return [float(m.step(x, y, lr=0.01)) for m in (module, other)]
    return [np.asarray(m(x)) for m in (module, other)]


@pytest.mark.slow
def test_kept_records_replay_on_this_machines_class(monkeypatch, tmp_path):
    key, here = _this_machines_folder()
    kept = _kept_modules(key)
    if not kept:
        pytest.skip(f"{key} keeps no module's records (metadata 'modules')")
    monkeypatch.setenv("TVMFRONT_RECORDS", str(tmp_path))  # no user records: shipped only
    monkeypatch.setenv("TVMFRONT_CACHE", "0")
    folder = os.path.join(SHIPPED, key)
    for example, names in sorted(kept.items()):
        path = os.path.join(records.ROOT, "examples", example + ".py")
        spec = importlib.util.spec_from_file_location("_shipped_" + example, path)
        user = importlib.util.module_from_spec(spec)
        monkeypatch.syspath_prepend(os.path.dirname(path))
        spec.loader.exec_module(user)
        modules = user.tvmfront_modules(target=here)
        for name in names:
            tuned = verify.rebuilt(modules[name], folder)
            default = verify.rebuilt(modules[name], False)
            assert tuned.build_info["records"] == [folder], (example, name)
            assert tuned.build_info["tuned_kernels"] > 0, (example, name)
            a, b = _same_outputs(tuned, default)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"{example}:{name}")


def _lenet_train_step(target, monkeypatch, strict=True):
    spec = importlib.util.spec_from_file_location("_lenet_digits", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(os.path.dirname(EXAMPLE))  # its `from _common import ...`
    spec.loader.exec_module(example)
    monkeypatch.setenv("TVMFRONT_CACHE", "0")  # a real build, not a cached library
    tvf.manual_seed(0)
    with warnings.catch_warnings():
        if strict:
            warnings.simplefilter("error", records.RecordsWarning)
        return tvf.compile_training(example.make_model(), tvf.nn.CrossEntropyLoss(),
                                    example.make_optimizer(), inputs=(64, *example.X_SHAPE),
                                    labels=(64,), target=target, records=SHIPPED)


def _this_machines_folder():
    """(folder, this machine's target at the folder's core count): the shipped records of this
    CPU's feature class, built as the machine that tuned them was (its num-cores)."""
    for folder in _folders():
        here = dict(target_json("x86"), **{"num-cores": _tuned_at(folder)["num-cores"]})
        if records.store_key(here) == folder:
            return folder, here
    pytest.skip(f"no shipped records for this machine's feature class "
                f"{records.store_key('x86')} (shipped: {', '.join(_folders()) or 'none'})")


def _lenet_records_folder():
    """_this_machines_folder(), skipping when records check judged LeNet's train step and
    kept none of its records (defaults at least as fast): none are shipped for it."""
    key, here = _this_machines_folder()
    judged = records.read(os.path.join(SHIPPED, key)).meta.get("modules")
    if judged and "train_b64" not in _kept_modules(key).get("lenet_digits", []):
        pytest.skip(f"{key}: records check found no records that make LeNet's train step "
                    f"faster; none are shipped for it")
    return key, here


@pytest.mark.slow
def test_shipped_records_apply_to_the_lenet_train_step(monkeypatch):
    key, here = _lenet_records_folder()
    module = _lenet_train_step(here, monkeypatch)
    info = module.build_info
    assert info["records"] == [os.path.join(SHIPPED, key)]
    assert info["tuned_kernels"] > 0
    # the same machine at another core count: they do not apply
    more_cores = dict(here, **{"num-cores": 8 * int(here["num-cores"])})
    with pytest.warns(records.RecordsWarning, match="none for this target"):
        module = _lenet_train_step(more_cores, monkeypatch, strict=False)
    assert module.build_info["tuned_kernels"] == 0


@pytest.mark.slow
def test_shipped_records_apply_to_another_cpu_model_of_the_class(monkeypatch):
    """An AVX-512 CPU that LLVM names differently from the tuning machine (whose records say
    e.g. rocketlake) reads the same folder and applies the same records."""
    key, here = _lenet_records_folder()
    if x86_class("x86") != "avx512":
        pytest.skip(f"this machine's key {key} is not the AVX-512 class")
    tuned_on = _tuned_at(key).get("mcpu")
    model = "skylake-avx512" if tuned_on != "skylake-avx512" else "icelake-server"
    other = dict(here, mcpu=model)
    assert records.store_key(other) == key
    module = _lenet_train_step(other, monkeypatch)
    assert module.build_info["tuned_kernels"] > 0
    assert module.manifest["target"]["mcpu"] == model
