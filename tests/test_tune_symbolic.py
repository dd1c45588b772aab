"""Tuning a module compiled for any batch size (tvmfront.tuning.symbolic): the kernels are
tuned at a representative size, their records carried over to the symbolic kernels, and a
fresh compile of the same symbolic module applies them, correct at every batch size."""

import glob
import json
import os
import shutil

import numpy as np
import pytest

import tvmfront as tvf
from _tuning import _private_cache, mlp  # noqa: F401  (an autouse fixture)
from tvmfront import records
from tvmfront._tvm import meta_schedule, tvm
from tvmfront.tuning import symbolic
from tvmfront.tuning.tasks import lowered_of

SIZES = (1, 7, 64, 100)  # one, a size no tile divides, the tuned size, past it


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype("float32")


def _all_records_apply(root):
    """Drop tune's verdicts: a record tuned with 4 trials is often slower than the default
    schedule, and then (rightly) not applied; these tests need records that apply."""
    for path in glob.glob(os.path.join(root, "*", records.META)):
        meta = json.load(open(path))
        meta.pop("kernels", None)
        json.dump(meta, open(path, "w"))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One tuning run (4 trials) of an any-batch MLP; the store with its verdicts dropped."""
    root = str(tmp_path_factory.mktemp("schedules"))
    module = tvf.compile_inference(mlp(), ("batch", 16), records=False)
    report = tvf.tune(module, budget=4, records=root, progress=False, sizes={"batch": 32})
    meta = json.load(open(os.path.join(root, records.store_key("x86"), records.META)))
    report.verdicts = meta.get("kernels", {})
    _all_records_apply(root)
    return module, report, root


@pytest.mark.slow
def test_a_fresh_compile_applies_the_records_at_every_batch_size(tuned):
    _, report, root = tuned
    assert report.trials == 4 and report.not_generalized == {}
    untuned = tvf.compile_inference(mlp(), ("batch", 16), records=False)
    fresh = tvf.compile_inference(mlp(), ("batch", 16), records=root)
    assert fresh.build_info["tuned_kernels"] > 0  # found by the symbolic kernel's own hash
    assert fresh.build_info["record_fallbacks"] == {}
    assert fresh.build_info["key"] != untuned.build_info["key"]  # the records enter the key
    for n in SIZES:
        np.testing.assert_allclose(fresh(_x(n, n)), untuned(_x(n, n)), rtol=1e-5, atol=1e-6,
                                   err_msg=f"batch {n}")


@pytest.mark.slow
def test_the_store_keeps_the_specialization_and_the_symbolic_record(tuned):
    module, report, root = tuned
    tuned_kernel = next(k for k in report.kernels if k.trials)
    assert tuned_kernel.symbolic  # tuned as a specialization of a symbolic kernel
    db = records.read(os.path.join(root, records.store_key("x86")))
    hashes = {h for h, _ in db.workloads}
    assert tuned_kernel.hash in hashes  # the static record MetaSchedule measured
    assert set(tuned_kernel.symbolic.values()) <= hashes  # and the one a build replays
    lowered, _ = lowered_of(module)
    assert set(tuned_kernel.symbolic.values()) <= {
        h for _, h in symbolic.symbolic_kernels(lowered).values()}
    # the record's verdict for the symbolic kernel: timed against the symbolic kernel's own
    # default schedule, at the tuning size
    default_us, tuned_us = tuned_kernel.symbolic_us
    assert default_us > 0 and tuned_us > 0
    for h in tuned_kernel.symbolic.values():
        if h in report.verdicts:  # none when the two timings are within the noise
            assert report.verdicts[h]["default_us"] == default_us
            assert report.verdicts[h]["sizes"] == {"batch": 32}


@pytest.mark.slow
def test_a_record_that_does_not_replay_falls_back_to_the_default_schedule(tuned, tmp_path):
    _, report, root = tuned
    broken = str(tmp_path / "broken")
    shutil.copytree(root, broken)
    folder = os.path.join(broken, records.store_key("x86"))
    db = records.read(folder)
    symbolic_hashes = {h for k in report.kernels for h in k.symbolic.values()}
    for w, rec in db.records:
        if db.workloads[w][0] in symbolic_hashes:  # a block the kernel does not have
            rec[0] = json.loads(json.dumps(rec[0]).replace('"dense"', '"no_such_block"'))
    records.write(folder, db)
    untuned = tvf.compile_inference(mlp(), ("batch", 16), records=False)
    module = tvf.compile_inference(mlp(), ("batch", 16), records=broken)
    assert module.build_info["tuned_kernels"] == 0
    assert module.build_info["record_fallbacks"]  # named, with TVM's cause
    for n in (1, 7):
        np.testing.assert_allclose(module(_x(n)), untuned(_x(n)), rtol=1e-5, atol=1e-6)


def _random_static_traces(func, count):
    """Traces of MetaSchedule's design space for `func` with random decisions, each with its
    postprocessing, as a tuning record holds them (no measuring: fast)."""
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    ms = meta_schedule(target)
    out = []
    for seed in range(count):
        ctx = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=target,
                             space_generator="post-order-apply", search_strategy="replay-trace",
                             task_name="t", rand_state=seed + 1)
        for sch in ctx.generate_design_space():
            if all(p.apply(sch) for p in ctx.space_generator.postprocs):
                out.append(sch.trace)
    return out


def test_generalized_traces_are_correct_at_every_size():
    """Any record of the batch-64 specialization, carried over to the symbolic kernel, computes
    the same result at sizes the tiles do not divide (the symbolic loop is split with an
    inferred outer extent and a guard, never with the tuned size's perfect tiles)."""
    module = tvf.compile_inference(mlp(), ("batch", 16), records=False)
    lowered, target = lowered_of(module)
    name = next(n for n in symbolic.symbolic_kernels(lowered) if "relu" in n)
    func = lowered[name]
    static = symbolic.specialize(func, {"batch": 64})
    assert not symbolic.names(static) and symbolic.names(func) == {"batch"}
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16)).astype("float32")
    b = rng.standard_normal(32).astype("float32")
    traces = _random_static_traces(static, 2)
    assert traces
    for trace in traces:
        generalized, sch = symbolic.generalize(trace, func)
        samples = [str(t).count("sample_perfect_tile") for t in (trace, generalized)]
        assert samples[1] == samples[0] - 1  # the batch loop's sample is gone, no other
        lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol",
                                                                          "main")}),
                          target=target)
        lib = lib.jit() if hasattr(lib, "jit") else lib
        for n in SIZES:
            x = _x(n, n)
            out = tvm.runtime.tensor(np.zeros((n, 32), "float32"))
            lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), tvm.runtime.tensor(b), out)
            np.testing.assert_allclose(out.numpy(), np.maximum(x @ w.T + b, 0), rtol=1e-5,
                                       atol=1e-5, err_msg=f"{generalized}\nbatch {n}")


def test_a_product_of_symbolic_dimensions_is_specialized_and_generalized():
    """A kernel over batch * seq rows (a flattened [batch, seq, d] tensor): tuned at 4 x 16,
    carried over, correct for other (batch, seq) pairs."""
    from tvmfront._tvm import te, tirx

    n, m = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    a = te.placeholder((n * m, 16), name="a")
    w = te.placeholder((8, 16), name="w")
    k = te.reduce_axis((0, 16), name="k")
    c = te.compute((n * m, 8), lambda i, j: te.sum(a[i, k] * w[j, k], axis=k), name="c")
    func = te.create_prim_func([a, w, c, n, m])
    static = symbolic.specialize(func, {"batch": 4, "seq": 16})
    assert [int(d.value) for d in static.params[0].shape] == [64, 16]
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    rng = np.random.default_rng(1)
    wv = rng.standard_normal((8, 16)).astype("float32")
    for trace in _random_static_traces(static, 1):
        _, sch = symbolic.generalize(trace, func)
        lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"]}), target=target)
        lib = lib.jit() if hasattr(lib, "jit") else lib
        for batch, seq in ((1, 1), (3, 5), (4, 16)):
            av = rng.standard_normal((batch * seq, 16)).astype("float32")
            out = tvm.runtime.tensor(np.zeros((batch * seq, 8), "float32"))
            lib["main"](tvm.runtime.tensor(av), tvm.runtime.tensor(wv), out, batch, seq)
            np.testing.assert_allclose(out.numpy(), av @ wv.T, rtol=1e-5, atol=1e-5)


def _store_of_random_records(module, root, work, seed):
    """A records store as tuning would leave it for `module`, without measuring: one random
    design-space record per specialized kernel, then carried over to the symbolic kernels."""
    from tvmfront._tvm import normalize_prim_func
    from tvmfront.tuning import merge, store

    lowered, target = lowered_of(module)
    tuning, symbolic_hashes = symbolic.tuning_module(lowered)
    ms = meta_schedule(target)
    db = ms.database.JSONDatabase(work_dir=work)
    for name in symbolic_hashes:
        mod = normalize_prim_func(tuning[name])
        ctx = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                             search_strategy="replay-trace", task_name=name, rand_state=seed)
        sch = ctx.generate_design_space()[-1]
        assert all(p.apply(sch) for p in ctx.space_generator.postprocs), name
        db.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, db.commit_workload(mod), [1e-5], target,
            ms.arg_info.ArgInfo.from_prim_func(tuning[name])))
    assert symbolic.add_generalized(work, lowered, tuning, symbolic_hashes, target) == {}
    merge.merge_folder(work, store.store_for(root, target), target=target)
    return len(symbolic_hashes)


@pytest.mark.slow
def test_every_kernel_of_an_any_batch_training_step_replays_and_trains_exactly(tmp_path):
    """Records on every symbolic kernel of a train step (forward, loss, gradients, Adam): the
    steps equal the untuned module's at batch sizes 1, 7, 64 and 100."""
    def step():
        return tvf.compile_training(mlp(), tvf.nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                    inputs=("batch", 16), labels=("batch",), records=False)

    untuned = step()
    count = _store_of_random_records(untuned, str(tmp_path / "records"), str(tmp_path), seed=3)
    tuned = tvf.compile_training(mlp(), tvf.nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                 inputs=("batch", 16), labels=("batch",),
                                 records=str(tmp_path / "records"))
    # every symbolic kernel: the forward's (GEMMs with their bias adds and ReLUs), the
    # loss's, the gradients' (a dense d/dx with the relu_grad after it) and Adam's
    assert tuned.build_info["tuned_kernels"] == count >= 9
    assert tuned.build_info["record_fallbacks"] == {}
    rng = np.random.default_rng(0)
    for n in SIZES:
        x, y = _x(n, n), rng.integers(0, 4, n)
        for _ in range(2):
            np.testing.assert_allclose(tuned.step(x, y), untuned.step(x, y), rtol=1e-5)
    for name, value in untuned.state_dict().items():
        np.testing.assert_allclose(tuned.state_dict()[name], value, rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_the_replayed_static_trace_alone_fails_on_the_symbolic_kernel():
    """What TVM 0.27 does without the carry-over: a record of the specialization does not
    replay on the symbolic kernel (SamplePerfectTile on a symbolic loop yields no factor)."""
    module = tvf.compile_inference(mlp(), ("batch", 16), records=False)
    lowered, _ = lowered_of(module)
    func = lowered[next(n for n in symbolic.symbolic_kernels(lowered) if "relu" in n)]
    trace = _random_static_traces(symbolic.specialize(func, {"batch": 64}), 1)[0]
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
    with pytest.raises(Exception, match="new_rv"):
        trace.apply_to_schedule(sch, remove_postproc=False)


def test_sizes_are_checked():
    module = tvf.compile_inference(mlp(), ("batch", 16), records=False)
    with pytest.raises(ValueError, match="batch"):
        tvf.tune(module, budget=1, sizes={"batch": 0})
    with pytest.raises(TypeError, match="sizes"):
        tvf.tune(module, budget=1, sizes=64)
    with pytest.raises(ValueError, match=r"\['seq'\].*\['batch'\]"):
        tvf.tune(module, budget=1, sizes={"seq": 16})
    static = tvf.compile_inference(mlp(), (4, 16), records=False)
    with pytest.raises(ValueError, match="none"):
        tvf.tune(static, budget=1, sizes={"batch": 4})


def test_time_module_calls_an_any_batch_module_at_the_given_size():
    from tvmfront.tuning.measure import time_module

    calls = []
    module = tvf.compile_training(mlp(), tvf.nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=("batch", 16), labels=("batch",), records=False)
    step = module.step
    module.step = lambda x, y, **kw: calls.append((x.shape, y.shape)) or step(x, y, **kw)
    assert time_module(module, min_seconds=0, min_runs=1, sizes={"batch": 3}) > 0
    assert calls[0] == ((3, 16), (3,))
    time_module(module, min_seconds=0, min_runs=1)
    assert calls[-1] == ((64, 16), (64,))  # the default tuning size
