"""tvf.tune over TVM RPC, on loopback: an aarch64 RPC server under qemu (records for the ARM
build, made by candidates cross-compiled here and timed "on the board"), and a fleet (a tracker
and two x86 servers under one key) that candidates fan out over.

Timings under emulation mean nothing; these tests check that records are made, stored under
the device's target key and applied, and that the tuned build computes the same results.
Every process a test starts runs in its own process group and is killed on teardown; server
starts and RPC sessions have timeouts, so a hang fails a test instead of blocking the run.
"""

import json
import os
import shutil
import textwrap
import time

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import cli, records, rpc
from tvmfront.errors import TvmfrontError
from tvmfront.target import resolve_target, target_json
from tvmfront.testing import qemu as cross
from tvmfront.testing import rpc as local

from _skip import skip_loudly
from _tuning import _private_cache, mlp  # noqa: F401  (an autouse fixture)

# Under qemu the server runs one thread: tune measures at the device's thread count and the
# records carry it (the store key's core class), so builds that apply them name it too.
ARM1 = dict(target_json("arm"), **{"num-cores": 1})
KEY86, KEY_ARM = records.store_key("x86"), records.store_key(ARM1)
X = np.random.default_rng(0).standard_normal((4, 16)).astype("float32")
CANDIDATE = "tvm_tmp_mod.so"  # what the builder names every candidate it links (its log line)


def _skip(request, reason):
    skip_loudly(request, f"skipping ARM RPC tests: {reason}")


def _candidates_loaded(server):
    """Candidates a server loaded (its log has one load_module line per module it loads)."""
    return sum(1 for line in server.output().splitlines()
               if "load_module" in line and line.rstrip().endswith(CANDIDATE))


def _store_without_verdicts(root, key, dest):
    """A copy of the store whose records all apply: tune leaves a record it measured slower than
    the default schedule out of builds, and under emulation that verdict is noise."""
    shutil.copytree(root, dest)
    path = os.path.join(dest, key, records.META)
    meta = json.load(open(path))
    meta.pop("kernels", None)
    json.dump(meta, open(path, "w"))
    return str(dest)


# ---- the rpc= spec and its errors (no tuning) ---------------------------------------------------
def test_rpc_spec_forms():
    assert rpc.parse("board:9090") == rpc.Remote("board", 9090, None, rpc.DEFAULT_TIMEOUT)
    assert rpc.parse("tracker:9190/rk3588") == rpc.Remote("tracker", 9190, "rk3588", 60)
    assert rpc.parse({"tracker": "tracker:9190", "key": "rk3588", "timeout": 120}) == \
        rpc.Remote("tracker", 9190, "rk3588", 120)
    assert rpc.parse({"host": "10.0.0.7", "port": 9090}) == rpc.Remote("10.0.0.7", 9090, None, 60)
    assert str(rpc.parse("t:1/k")) == "t:1/k" and str(rpc.parse("b:2")) == "b:2"
    for bad, match in [("board", "not host:port"), ("board:x", "not host:port"),
                       ("board:70000", "not host:port"), ("t:9190/", "no key"),
                       ({"tracker": "t:9190"}, "needs the key"), ({"host": "b"}, "needs host"),
                       ({"host": "b", "port": 1, "timeout": 0}, "timeout"),
                       ({"host": "b", "port": 1, "key": "k"}, "key goes with tracker"),
                       ({"tracker": "t:1", "key": "k", "keys": 2}, "unknown field"),
                       (9090, "string or a dict")]:
        with pytest.raises(rpc.RpcSpecError, match=match):
            rpc.parse(bad)


def test_unreachable_server_or_tracker_is_a_clear_error_not_a_hang():
    module = tvf.compile_inference(mlp(), (4, 16), records=False)
    port = local.free_port()
    t0 = time.monotonic()
    with pytest.raises(rpc.RpcError, match=f"cannot reach the RPC server at 127.0.0.1:{port} "
                                           r".*python -m tvm.exec.rpc_server"):
        tvf.tune(module, budget=2, rpc=f"127.0.0.1:{port}")
    with pytest.raises(rpc.RpcError, match=f"cannot reach the tracker at 127.0.0.1:{port} "
                                           r".*python -m tvm.exec.rpc_tracker"):
        tvf.tune(module, budget=2, rpc=f"127.0.0.1:{port}/board")
    with pytest.raises(rpc.RpcSpecError):
        tvf.tune(module, budget=2, rpc="127.0.0.1")
    assert time.monotonic() - t0 < 10


def test_arm_tuning_without_rpc_says_how(tmp_path):
    module = tvf.compile_inference(mlp(), (4, 16), target="arm", records=False)
    with pytest.raises(TvmfrontError, match=r"cannot run code for aarch64.*rpc="):
        tvf.tune(module, budget=2, records=tmp_path)


# ---- a fleet: a tracker and two x86 servers under one key -----------------------------------
@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    logs = tmp_path_factory.mktemp("fleet")
    with local.start_tracker(log=str(logs / "tracker.log")) as tracker:
        servers = []
        try:
            for i in range(2):
                servers.append(local.start_server(tracker=tracker, key="fleet",
                                                log=str(logs / f"server{i}.log")))
            yield tracker, servers
        finally:
            for server in servers:
                server.stop()


def test_tracker_without_servers_for_the_key(fleet):
    tracker, _ = fleet
    assert rpc.servers(f"{tracker.address}/fleet") == 2
    with pytest.raises(rpc.RpcError, match=f"holds no server under key 'rk3588' .*keys it holds: "
                                           f"fleet.*--tracker {tracker.address} --key rk3588"):
        rpc.servers(f"{tracker.address}/rk3588")
    with pytest.raises(rpc.RpcError, match="handshake failed"):  # a tracker is not a server
        rpc.servers(tracker.address)


@pytest.mark.slow
def test_fleet_fans_candidates_out_over_every_server(fleet, tmp_path):
    tracker, servers = fleet
    module = tvf.compile_inference(mlp(), (4, 16), records=False)
    reference = module(X)
    before = [_candidates_loaded(s) for s in servers]
    report = tvf.tune(module, budget=4, batch_size=4, records=tmp_path, progress=False,
                      rpc={"tracker": tracker.address, "key": "fleet"})
    assert report.trials == 4 and report.failed == 0
    assert report.servers == 2 and report.remote == f"{tracker.address}/fleet"
    assert "measured over RPC on" in str(report)
    db = records.read(tmp_path / KEY86)
    assert db is not None and len(db) >= 1 and all(records.mean_seconds(r) for _, r in db.records)
    # both servers loaded and timed candidates (the runner holds one session per server)
    served = [_candidates_loaded(s) - b for s, b in zip(servers, before)]
    assert all(n >= 1 for n in served) and sum(served) == 4, served
    # the kernels were timed on the fleet too, before and after tuning
    assert all(k.default_us for k in report.kernels)
    np.testing.assert_allclose(module(X), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_cli_rpc(fleet, tmp_path, capsys):
    tracker, _ = fleet
    user = tmp_path / "model.py"
    user.write_text(textwrap.dedent("""
        import tvmfront as tvf

        def tvmfront_modules(target="x86"):
            tvf.manual_seed(0)
            model = tvf.nn.Sequential(tvf.nn.Linear(16, 32), tvf.nn.ReLU(), tvf.nn.Linear(32, 4))
            return {"infer": tvf.compile_inference(model, (4, 16), target=target)}
    """))
    rc = cli.main(["tune", str(user), "--budget", "2", "--rpc", f"{tracker.address}/fleet",
                   "--records", str(tmp_path / "schedules"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"measured over RPC on {tracker.address}/fleet (2 server(s))" in out
    assert "default us" in out and "end to end: not timed" in out
    assert records.read(tmp_path / "schedules" / KEY86) is not None
    rc = cli.main(["tune", str(user), "--budget", "2", "--rpc", "nowhere"])
    assert rc == 2 and "not host:port" in capsys.readouterr().err


# ---- an ARM board: the aarch64 RPC server under qemu ------------------------------------------
@pytest.fixture(scope="module")
def arm_server(request, tmp_path_factory):
    try:
        cross.arm_env()
        rpc.cxx_for(resolve_target("arm"))
    except (cross.ArmUnavailable, TvmfrontError) as err:
        _skip(request, str(err))
    log = tmp_path_factory.mktemp("qemu") / "server.log"
    with local.start_server(aarch64=True, log=str(log)) as server:
        yield server


# Trials of the aarch64 tune. Most candidates of its one kernel are MetaSchedule's wrong
# schedules (tvmfront/tuning/correctness.py), which tune drops: with 4 trials all 4 were wrong
# in 2 of 6 suite runs of 2026-12-04 and no record was kept for these tests to read.
ARM_BUDGET = 12


@pytest.fixture(scope="module")
def arm_tuned(arm_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("schedules")
    module = tvf.compile_inference(mlp(), (4, 16), target="arm", records=False)
    before = _candidates_loaded(arm_server)
    report = tvf.tune(module, budget=ARM_BUDGET, records=root, progress=False,
                      rpc=arm_server.address)
    return module, report, root, _candidates_loaded(arm_server) - before


@pytest.mark.slow
def test_arm_records_are_made_on_the_device_and_kept_under_its_key(arm_tuned):
    module, report, root, loaded = arm_tuned
    assert report.trials == ARM_BUDGET and report.failed == 0 and loaded == ARM_BUDGET  # qemu
    assert report.store == os.path.join(root, KEY_ARM) and KEY_ARM.startswith("aarch64-")
    assert os.listdir(root) == [KEY_ARM]
    db = records.read(report.store)
    assert len(db) >= 1 and all(records.mean_seconds(r) for _, r in db.records)
    assert all(rec[2]["mtriple"] == "aarch64-linux-gnu" for _, rec in db.records)
    meta = json.load(open(os.path.join(report.store, records.META)))
    assert meta["target_key"] == KEY_ARM
    assert all(k.default_us for k in report.kernels)  # kernels timed on the device
    assert not module.runnable  # rebuilt in place for the board, not for here


@pytest.mark.slow
def test_tuned_arm_build_applies_the_records_and_matches_x86(arm_tuned, tmp_path):
    _, report, root, _ = arm_tuned
    # a build with the store applies every record but those tune found slower than the
    # default schedule on the device
    meta = json.load(open(os.path.join(report.store, records.META)))
    slower = sum(1 for v in meta.get("kernels", {}).values() if v["verdict"] == "slower")
    built = tvf.compile_inference(mlp(), (4, 16), target=ARM1, records=str(root))
    assert built.build_info["tuned_kernels"] == len(records.read(report.store)) - slower
    # every record applied (emulated timings decide nothing): the tuned ARM bundle under qemu
    applied = _store_without_verdicts(root, KEY_ARM, tmp_path / "all")
    tuned = tvf.compile_inference(mlp(), (4, 16), target=ARM1, records=applied)
    assert tuned.build_info["tuned_kernels"] >= 1
    bundle = tuned.export(str(tmp_path / "bundle"))
    outputs, run = cross.run_bundles_aarch64(
        [{"bundle": bundle, "op": "predict", "x": "x", "out": "pred"}], {"x": X}, timeout=300)
    assert run["machine"] == "aarch64"
    reference = tvf.compile_inference(mlp(), (4, 16), target="x86", records=False)(X)
    np.testing.assert_allclose(outputs["pred"], reference, rtol=1e-5, atol=1e-6)
