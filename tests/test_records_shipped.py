"""The tuning records shipped in the repository's schedules/ folder.

1. Every shipped folder reads without warnings, and every record in it was made for a target
   with the folder's key (so a build reading ``schedules/<its key>`` applies all of them).
2. On a machine whose target key has shipped records, they apply to the LeNet train step of
   examples/lenet_digits.py (the README's main command), also when LLVM names this CPU
   differently from the machine that tuned them (the key is the feature class, not the model).
"""

import importlib.util
import os
import warnings

import pytest

import tvmfront as tvf
from tvmfront import records
from tvmfront.target import target_json, target_key, x86_class

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
    assert target_key(db.meta["target"]) == folder
    for _, rec in db.records:
        assert records.record_target_key(rec[2]) == folder, rec[2]
        assert records.mean_seconds(rec) is not None  # the store keeps measured records only
    assert len(db.best()) == len(db)  # one record per kernel


def _lenet_train_step(target, monkeypatch):
    spec = importlib.util.spec_from_file_location("_lenet_digits", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(os.path.dirname(EXAMPLE))  # its `from _common import ...`
    spec.loader.exec_module(example)
    monkeypatch.setenv("TVMFRONT_CACHE", "0")  # a real build, not a cached library
    tvf.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", records.RecordsWarning)
        return tvf.compile_training(example.make_model(), tvf.nn.CrossEntropyLoss(),
                                    example.make_optimizer(), inputs=(64, *example.X_SHAPE),
                                    labels=(64,), target=target, records=SHIPPED)


def _this_machines_folder():
    key = target_key("x86")
    if key not in _folders():
        pytest.skip(f"no shipped records for this machine's key {key} "
                    f"(shipped: {', '.join(_folders()) or 'none'})")
    return key


@pytest.mark.slow
def test_shipped_records_apply_to_the_lenet_train_step(monkeypatch):
    key = _this_machines_folder()
    module = _lenet_train_step("x86", monkeypatch)
    info = module._build_info
    assert info["target_key"] == key
    assert info["records"] == [os.path.join(SHIPPED, key)]
    assert info["tuned_kernels"] > 0


@pytest.mark.slow
def test_shipped_records_apply_to_another_cpu_model_of_the_class(monkeypatch):
    """An AVX-512 CPU that LLVM names differently from the tuning machine (whose records say
    e.g. rocketlake) reads the same folder and applies the same records."""
    key = _this_machines_folder()
    if x86_class("x86") != "avx512":
        pytest.skip(f"this machine's key {key} is not the AVX-512 class")
    tuned_on = records.read(os.path.join(SHIPPED, key)).meta["target"].get("mcpu")
    model = "skylake-avx512" if tuned_on != "skylake-avx512" else "icelake-server"
    other = dict(target_json("x86"), mcpu=model)
    assert target_key(other) == key
    module = _lenet_train_step(other, monkeypatch)
    assert module._build_info["tuned_kernels"] > 0
    assert module.manifest["target"]["mcpu"] == model
