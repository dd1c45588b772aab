"""A record's verdict compares it with its default schedule timed at the same time, in turns,
not with the default latency taken before the search.

The defect: tvf.tune kept the default-schedule latency it measured before the search (for the
task weights) and judged each record, timed after the search, against it. On a shared machine
the load of those two moments differs: the AVX2 MLP's dense kernel measured 251 us with its
default schedule before a search under load and 29 us idle, while its record ran 104 us, and
the record was judged faster and applied."""

import json
import os

import numpy as np
import pytest

import tvmfront as tvf
from _tuning import _private_cache, mlp  # noqa: F401  (an autouse fixture)
from tvmfront import records
from tvmfront.tuning import measure

LOADED_US, DEFAULT_US, RECORD_US = 100.0, 10.0, 30.0


def _timings_under_load_before_the_search(monkeypatch):
    """measure_kernels as a machine whose load ends once the search starts: the first timing
    (defaults, before the search) reads 10x slow; after it the default schedule takes 10 us
    and every record 30 us. Returns the list of records= arguments it was called with."""
    calls = []

    def fake(lowered, target, names, records=False, every_record=False, **kw):
        calls.append(records)
        if records is False:
            return {n: LOADED_US if len(calls) == 1 else DEFAULT_US for n in names}
        return {n: RECORD_US for n in names}

    monkeypatch.setattr(measure, "measure_kernels", fake)
    return calls


@pytest.mark.slow  # one tuning batch of two candidates: ~10-30 s on 2 shared cores
def test_a_record_is_judged_against_the_default_timed_beside_it(tmp_path, monkeypatch):
    module = tvf.compile_inference(mlp(), (4, 16), records=False)
    x = np.ones((4, 16), "float32")
    reference = module(x)
    calls = _timings_under_load_before_the_search(monkeypatch)
    report = tvf.tune(module, budget=2, records=tmp_path, progress=False)
    with_record = [k for k in report.kernels if k.record_us is not None]
    assert with_record, "the search stored no record: nothing to judge"
    for k in with_record:  # the table shows the default timed beside the record
        assert (k.default_us, k.tuned_us) == (DEFAULT_US, RECORD_US), k
    meta = json.load(open(os.path.join(tmp_path, records.store_key(module._target),
                                       records.META)))
    verdicts = {h: v["verdict"] for h, v in meta["kernels"].items()}
    assert verdicts == {k.hash: "slower" for k in with_record}, verdicts
    # after the search: default and records timed in turns, the default again in each round
    after = calls[1:]
    assert after.count(False) == measure.PAIRED_ROUNDS == len(after) - after.count(False)
    assert after[:2] == [False, str(report.store)] and after[2:4] == [str(report.store), False]
    # the record judged slower is left out of the rebuilt module and of fresh builds
    assert module.build_info["tuned_kernels"] == 0
    np.testing.assert_allclose(module(x), reference, rtol=1e-5, atol=1e-6)
    fresh = tvf.compile_inference(mlp(), (4, 16), records=tmp_path)
    assert fresh.build_info["tuned_kernels"] == 0
