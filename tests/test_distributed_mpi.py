"""Data-parallel training across 2 MPI processes (mpiexec from the mpich wheel in the venv):
every rank's parameters identical at every step, the 2 x 32 run on the 1 x 64 trajectory,
BatchNorm's local statistics and averaged running statistics, a rank that dies or hangs ends
the job within a bounded time, and rank 0's checkpoint resumes on 2 ranks and on 1.

Each launch runs TVM with one thread per rank (2 ranks on CI's 2 cores); the ranks load their
modules from the compile cache the reference compile here filled."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tvmfront as tvf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _distributed_worker as worker  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_distributed_worker.py")
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("MPI missing: mpi4py is not installed (pip install -e '.[test]' installs "
                    "mpi4py and mpich); the 2-process tests did not run")
    if not os.path.exists(MPIEXEC):
        pytest.skip(f"MPI missing: no mpiexec next to {sys.executable} (the mpich wheel "
                    f"installs it); the 2-process tests did not run")
    return MPIEXEC


def run_job(cmd, env, timeout):
    """subprocess.run for an MPI job: on timeout the whole process group is killed, ranks
    included (killing mpiexec alone would leave them running), then the test fails."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} still ran after {timeout} s (killed):\n{stdout}{stderr}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def launch(mpiexec, n, scenario, out, timeout=120, env=None, args=()):
    """Run the worker's `scenario` on n ranks; (completed process, seconds, {rank: result})."""
    full = dict(os.environ, PYTHONPATH=ROOT, TVM_NUM_THREADS="1", TVMFRONT_PROGRESS="0",
                **(env or {}))
    start = time.perf_counter()
    proc = run_job([mpiexec, *args, "-n", str(n), sys.executable, WORKER, scenario, str(out)],
                   full, timeout)
    seconds = time.perf_counter() - start
    results = {}
    for r in range(n):
        path = out / f"rank{r}.json"
        if path.exists():
            results[r] = json.loads(path.read_text())
            path.unlink()
    return proc, seconds, results


def _assert_job_ended(proc, seconds, ranks, *fragments):
    """A launch (launch's result) that failed as a whole within a minute, no rank finishing,
    its output holding each fragment."""
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and not ranks, output
    for fragment in fragments:
        assert fragment in output, (fragment, output)
    assert seconds < 60, seconds


def test_two_ranks_follow_one_rank_at_twice_the_batch(mpiexec, tmp_path):
    x, y = worker.digits64()
    reference = tvf.Trainer(worker.lenet(100), seed=0, progress=False)  # rank 0's init
    ref_losses = [h["loss"] for h in reference.fit(x, y, epochs=worker.STEPS, batch_size=64)]
    bx, by = worker.blobs(64)
    bn_ref = worker.mlp(200)
    start = bn_ref.state_dict()
    proc, _, ranks = launch(mpiexec, 2, "equivalence", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r0, r1 = ranks[0], ranks[1]
    # identical parameters (and buffers) on both ranks before every step and after the last
    assert r0["hashes"] == r1["hashes"] and len(r0["hashes"]) == worker.STEPS + 1
    assert len(set(r0["hashes"])) == worker.STEPS + 1  # and they did change every step
    assert r0["bn_hashes"] == r1["bn_hashes"]
    # the 2 x 32 trajectory is the 1 x 64 one, to float32 reduction order
    np.testing.assert_allclose(r0["losses"], ref_losses, rtol=2e-4)
    assert r0["losses"] == r1["losses"]
    assert ref_losses[-1] < 0.5 * ref_losses[0]  # it trained
    # the LeNet's gradients travel as one float32 buffer: its parameters, the loss, the count
    n_params = sum(a.size for a in reference.module.state_dict().values())
    assert r0["allreduce_bytes"] == 4 * (n_params + 2)

    # BatchNorm: each rank normalises with its own 32 samples' statistics, which is what
    # gradient accumulation over the two shards computes on one process...
    bn_losses = []
    for e in range(5):
        order = np.random.default_rng(e).permutation(64)
        shards = [order[r::2] for r in range(2)]
        bn_losses.append(np.mean([bn_ref.accumulate(bx[s], by[s]) for s in shards]))
        bn_ref.apply()
        if e == 0:  # ...and the running statistics are the mean of the ranks' updates
            mean = 0.1 * bx.mean(axis=0)
            var = 0.9 + 0.1 * np.mean([bx[s].var(axis=0, ddof=1) for s in shards], axis=0)
            got = r0["bn_buffers_step1"]
            np.testing.assert_allclose(got["0.running_mean"], mean, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(got["0.running_var"], var, rtol=1e-5)
    np.testing.assert_allclose(r0["bn_losses"], bn_losses, rtol=2e-5)
    params = bn_ref.state_dict()
    for name in bn_ref.param_names:
        np.testing.assert_allclose(r0["bn_state"][name], params[name], rtol=1e-4, atol=1e-6)
    assert not np.allclose(params["1.weight"], start["1.weight"])


def test_a_killed_rank_ends_the_job_and_its_checkpoint_resumes(mpiexec, tmp_path):
    worker.mlp(0, norm=False)  # fills the compile cache for the ranks
    # the launcher names the death
    _assert_job_ended(*launch(mpiexec, 2, "kill", tmp_path, timeout=90), "signal 9")

    # rank 0's checkpoint (after 2 epochs) resumes on 2 ranks of 16 ...
    proc, _, ranks = launch(mpiexec, 2, "resume", tmp_path, env={"LOCAL_BATCH": "16"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    two = ranks[0]
    assert two["hashes"] == ranks[1]["hashes"]
    assert two["step"] == 2 * 3 + 2 * 3 and two["epochs"] == 4  # 96 samples, batches of 32
    # ... and on 1 rank of 32: the same global batches, the same trajectory
    one = tvf.Trainer(worker.mlp(7, norm=False), seed=9, progress=False)
    one.load_checkpoint(tmp_path / "ckpt.safetensors")
    x, y = worker.blobs()
    losses = [h["loss"] for h in one.fit(x, y, epochs=2, batch_size=32)[-2:]]
    np.testing.assert_allclose(two["losses"], losses, rtol=1e-4)
    assert one.module.step_count == two["step"]


def test_a_rank_that_exits_early_ends_the_job_at_once(mpiexec, tmp_path):
    worker.mlp(0, norm=False)
    _assert_job_ended(*launch(mpiexec, 2, "exit", tmp_path, timeout=90,
                              env={"TVMFRONT_DIST_TIMEOUT": "600"}),
                      "rank(s) 1 left the job", "aborting the job")


def test_a_hung_rank_times_out_and_ends_the_job(mpiexec, tmp_path):
    worker.mlp(0, norm=False)
    _assert_job_ended(*launch(mpiexec, 2, "hang", tmp_path, timeout=90,
                              env={"TVMFRONT_DIST_TIMEOUT": "3"}),
                      "DistributedError", "waited", "aborting the job")


def test_lenet_example_trains_on_two_ranks(mpiexec, tmp_path):
    worker.lenet(0)  # the example's module: the ranks load it from the compile cache
    env = dict(os.environ, PYTHONPATH=ROOT, TVM_NUM_THREADS="1")
    proc = run_job([mpiexec, "-n", "2", sys.executable,
                    os.path.join(ROOT, "examples", "lenet_digits.py"), "--distributed",
                    "--epochs", "3", "--out", str(tmp_path / "bundle")], env, 180)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # rank 0 alone prints, reports progress and exports
    assert proc.stdout.count("compiled train step") == 1, output
    assert "2 ranks of 32 samples per step" in proc.stdout
    assert len(re.findall(r"epoch \d/3 loss=", output)) == 3, output
    assert sorted(os.listdir(tmp_path / "bundle")) == [
        "manifest.json", "module.so", "optimizer.safetensors", "params.safetensors"]
    accuracy = float(re.search(r"test_accuracy=([0-9.]+)", proc.stdout).group(1))
    assert accuracy >= 0.7, output


def test_tvmfront_launch_runs_a_script_on_n_ranks(mpiexec, tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text("import os, sys, tvmfront as tvf\n"  # a file per rank: no interleaving
                      "w = tvf.distributed.init()\n"
                      "with open(os.path.join(sys.argv[1], f'r{w.rank}'), 'w') as f:\n"
                      "    f.write(f'rank {w.rank} of {w.size} {sys.argv[2:]}')\n")
    proc = run_job([sys.executable, "-m", "tvmfront.cli", "launch", "-n", "2", str(script),
                    str(tmp_path), "--flag", "x"], dict(os.environ, PYTHONPATH=ROOT), 120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(tmp_path / f"r{r}").read_text() for r in range(2)] == [
        "rank 0 of 2 ['--flag', 'x']", "rank 1 of 2 ['--flag', 'x']"]
