"""Tuned schedules are checked against the default schedule before tuning keeps them
(tvmfront.tuning.correctness), and dense weights are packed once on aarch64 too.

The wrong schedule here is one MetaSchedule's multi-level tiling makes for the dense on
panels (tvmfront.prepack), which writes out[i, jo * P + ji]: the epilogue put under a tile
of ji with jo inside gets the hull of the columns the tile writes, gaps included, and
computes the gaps from a per-tile buffer that holds garbage there. Such a record once made
tests/test_rpc.py's tuned aarch64 build give wrong numbers."""

import os

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import records
from tvmfront._tvm import meta_schedule, normalize_prim_func, s_tir
from tvmfront.target import resolve_target, target_json
from tvmfront.tuning import correctness, verify
from tvmfront.tuning.tasks import kernels_of

from _tuning import _private_cache  # noqa: F401  (an autouse fixture)

X = np.random.default_rng(0).standard_normal((4, 16)).astype("float32")
ARM1 = dict(target_json("arm"), **{"num-cores": 1})
FAST = 1e-9  # the wrong record's run time: the best any store holds


def _mlp(hidden=64):
    """Its first layer has several panels on every CPU (P = 8, 16 or 32 columns)."""
    tvf.manual_seed(0)
    return tvf.nn.Sequential(tvf.nn.Linear(16, hidden), tvf.nn.ReLU(), tvf.nn.Linear(hidden, 4))


def _dense_on_panels(module):
    """(name, PrimFunc) of the module's fused dense on several panels."""
    for gvar, func in module._lowered.functions.items():
        if gvar.name_hint.startswith("fused_dense_packed_"):
            return gvar.name_hint, func
    raise AssertionError("no dense on panels: " + ", ".join(
        g.name_hint for g in module._lowered.get_global_vars()))


def _wrong_schedule(func):
    """The dense on panels with its epilogue under the outer half of each panel's columns and
    every panel inside (what MetaSchedule's tiling and reverse_compute_at make)."""
    mod = normalize_prim_func(func)
    sch = s_tir.Schedule(mod)  # `mod` held: a module only the schedule holds is edited in place
    dense = sch.get_sblock("dense")
    i, jo, ji, k = sch.get_loops(dense)
    outer, inner = sch.split(ji, [2, int(sch.get(ji).extent) // 2])
    sch.reorder(outer, i, jo, k, inner)
    sch.reverse_compute_at(sch.get_consumers(dense)[0], outer)
    return sch


def _write_record(folder, func, sch, target):
    """A store (MetaSchedule database folder) holding `sch` as the record of `func`."""
    ms = meta_schedule(target)
    db = ms.database.JSONDatabase(work_dir=str(folder))
    db.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, db.commit_workload(normalize_prim_func(func)), [FAST], target,
        ms.arg_info.ArgInfo.from_prim_func(func)))


def _names(module):
    return {k.hash: k.name for k in kernels_of(module)}


def test_a_wrong_record_computes_wrong_numbers_and_the_check_drops_it(tmp_path):
    module = tvf.compile_inference(_mlp(), (4, 16), records=False)
    name, func = _dense_on_panels(module)
    _write_record(tmp_path, func, _wrong_schedule(func), module._target)
    applied = tvf.compile_inference(_mlp(), (4, 16), records=str(tmp_path))
    assert applied.build_info["tuned_kernels"] == 1
    # the schedule is wrong indeed: its gaps hold garbage, which may read as NaN (no `>` then)
    assert not np.allclose(applied(X), module(X), rtol=0, atol=1e-2)

    wrong, dropped = correctness.check_database(str(tmp_path), module._lowered,
                                                module._target, _names(module))
    assert list(wrong) == [name] and len(dropped) == 1
    assert len(records.read(tmp_path)) == 0
    again = tvf.compile_inference(_mlp(), (4, 16), records=str(tmp_path))
    assert again.build_info["tuned_kernels"] == 0
    np.testing.assert_allclose(again(X), module(X), rtol=1e-5, atol=1e-6)


def test_a_correct_record_passes_the_check_and_stays(tmp_path):
    module = tvf.compile_inference(_mlp(), (4, 16), records=False)
    name, func = _dense_on_panels(module)
    mod = normalize_prim_func(func)
    sch = s_tir.Schedule(mod)
    i, jo, ji, k = sch.get_loops(sch.get_sblock("dense"))
    sch.reorder(jo, i, k, ji)  # a plain reorder: right
    _write_record(tmp_path, func, sch, module._target)
    wrong, dropped = correctness.check_database(str(tmp_path), module._lowered,
                                                module._target, _names(module))
    assert wrong == {} and dropped == [] and len(records.read(tmp_path)) == 1


def test_arm_packs_weights_once_and_its_records_are_checked_on_this_machine(tmp_path):
    module = tvf.compile_inference(_mlp(), (4, 16), target=ARM1, records=False)
    functions = {g.name_hint for g in module._lowered.get_global_vars()}
    assert {"transform_params", "predict_packed"} <= functions
    name, func = _dense_on_panels(module)
    assert int(func.params[1].shape[0]) >= 2  # several panels of 8 columns
    target = resolve_target(ARM1)
    assert correctness.host_target(target) is not target  # the check runs here, not on ARM
    _write_record(tmp_path, func, _wrong_schedule(func), target)
    wrong, dropped = correctness.check_database(str(tmp_path), module._lowered, target,
                                                _names(module))
    assert list(wrong) == [name] and len(dropped) == 1 and len(records.read(tmp_path)) == 0


def test_max_error_allows_reassociation_only():
    want = [np.array([1.0, -2.0, 1000.0], "float32"), np.array([3, 4], "int64")]
    assert correctness.max_error([want[0] * (1 + 1e-6), want[1]], want) == 0.0
    assert correctness.max_error([want[0] + [0, 0, 5], want[1]], want) > 0
    assert correctness.max_error([want[0], want[1] + 1], want) == np.inf
    nan = np.array([np.nan, 1.0], "float32")
    assert correctness.max_error([nan], [nan]) == 0.0
    assert correctness.max_error([np.array([0.0, 1.0], "float32")], [nan]) == np.inf


@pytest.mark.slow
def test_tune_drops_a_wrong_record_of_its_store_and_the_module_computes_right(tmp_path):
    """The store holds a wrong record, the fastest there is: tune (which starts from the
    store's records) finds it wrong, takes it out of the store, and the module it rebuilds
    computes what the untuned one does. Before the check, the record stayed the best and the
    rebuilt module applied it."""
    module = tvf.compile_inference(_mlp(), (4, 16), records=False)
    reference = module(X)
    name, func = _dense_on_panels(module)
    folder = records.store_for(tmp_path, module._target)
    os.makedirs(folder)
    _write_record(folder, func, _wrong_schedule(func), module._target)
    report = tvf.tune(module, budget=2, records=tmp_path, progress=False)
    np.testing.assert_allclose(module(X), reference, rtol=1e-5, atol=1e-6)
    db = records.read(folder)
    assert all(records.mean_seconds(rec) > FAST for _, rec in db.records)
    assert name in report.wrong and "wrong results" in str(report)
    rebuilt = tvf.compile_inference(_mlp(), (4, 16), records=str(tmp_path))
    np.testing.assert_allclose(rebuilt(X), reference, rtol=1e-5, atol=1e-6)


def test_records_check_finds_a_wrong_record_and_prune_drops_it(tmp_path):
    """Stores tuned before tuning checked its records: `tvmfront records check --prune`."""
    module = tvf.compile_inference(_mlp(), (4, 16), records=False)
    name, func = _dense_on_panels(module)
    _write_record(tmp_path, func, _wrong_schedule(func), module._target)
    lines = []
    check = verify.check_module("mlp", module, str(tmp_path), rounds=1, min_speedup=0.0,
                                min_seconds=0.01, log=lines.append)
    assert list(check.wrong.values()) == [name] and len(records.read(tmp_path)) == 1
    assert any("computes wrong results" in line for line in lines), lines
    assert verify.prune(str(tmp_path), [check]) == set(check.wrong)
    assert len(records.read(tmp_path)) == 0
