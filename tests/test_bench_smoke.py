"""bench/ keeps working: the tvmfront worker of bench/peers.py imports and times a tiny case
(it once imported the removed tvmfront.tune and failed for days unnoticed), the driver lists
its sections, and the transformer/resnet stand-ins are the models the PyTorch and JAX
workers build (their parameter counts, which those workers check, from _workloads.py)."""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import tvmfront as tvf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def _bench_module(name):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return __import__(name)


@pytest.mark.slow  # a process importing tvmfront and compiling the MLP: ~5 s of CPU
def test_tvmfront_worker_prints_a_timed_row():
    spec = {"section": "infer", "models": ["mlp"], "batches": [1], "variants": ["default"],
            "min_runs": 1, "min_seconds": 0.0}
    env = dict(os.environ, PYTHONPATH=ROOT, TVMFRONT_PROGRESS="0")
    out = subprocess.run([sys.executable, os.path.join(BENCH, "_peer_tvmfront.py"),
                          json.dumps(spec)], capture_output=True, text=True, env=env,
                         cwd=BENCH, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])["rows"]
    assert [(r["case"], r["contender"]) for r in rows] == [("mlp b1", "tvmfront default")]
    assert 0 < rows[0]["seconds"] < 1, rows


@pytest.mark.slow  # a process importing tvmfront and compiling one small GEMM: ~5 s of CPU
def test_tvmfront_worker_times_a_gemm_interleaved_with_numpy():
    # 5 rounds: the median of the rounds' ratios and the ratio of the medians agree within 2x
    # unless most rounds are disturbed (with 2, one load spike under `-n 2` beside the tuning
    # tests once set them 2x apart)
    spec = {"section": "ops", "ops": {"gemm 64": {"kind": "gemm", "n": 64, "form": "A B^T"}},
            "variants": ["default"], "min_runs": 1, "min_seconds": 0.0, "paired_rounds": 5}
    env = dict(os.environ, PYTHONPATH=ROOT, TVMFRONT_PROGRESS="0")
    out = subprocess.run([sys.executable, os.path.join(BENCH, "_peer_tvmfront.py"),
                          json.dumps(spec)], capture_output=True, text=True, env=env,
                         cwd=BENCH, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    row, = [r for r in json.loads(out.stdout.strip().splitlines()[-1])["rows"]
            if r["contender"] == "tvmfront default"]
    assert row["paired_rounds"] == 5 and 0 < row["paired_numpy_seconds"] < 0.01, row
    assert row["paired_numpy_ratio"] == pytest.approx(
        row["paired_numpy_seconds"] / row["paired_seconds"], rel=1.0), row


def _has_avx2():
    """Whether this CPU has what peers.py --isa avx2 asks of it (the driver's own check)."""
    peers = _bench_module("peers")
    return peers.ISA_CAPS["avx2"]["flags"] <= peers.cpu_flags()


@pytest.mark.slow  # a process compiling one small GEMM for AVX2: ~5 s of CPU
@pytest.mark.skipif(not _has_avx2(), reason="AVX2 code runs on an AVX2 CPU only")
def test_isa_caps_reach_the_tvmfront_worker_and_the_peak_probe(tmp_path):
    """peers.py --isa avx2: the spec's target builds tvmfront's kernels for AVX2, the peak
    probe compiles for -march=haswell (8 lanes), and every worker gets the caps' env."""
    peers = _bench_module("peers")
    cap = peers.ISA_CAPS["avx2"]
    env = dict(os.environ, PYTHONPATH=ROOT, TVMFRONT_PROGRESS="0")
    spec = {"section": "ops", "ops": {"gemm 64": {"kind": "gemm", "n": 64}},
            "variants": ["default"], "min_runs": 1, "min_seconds": 0.0, "paired_rounds": 0,
            "target": cap["target"]}
    out = subprocess.run([sys.executable, os.path.join(BENCH, "_peer_tvmfront.py"),
                          json.dumps(spec)], capture_output=True, text=True, env=env,
                         cwd=BENCH, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])["info"]
    assert "avx2" in info["target_key"], info
    out = subprocess.run([sys.executable, os.path.join(BENCH, "_peer_numpy.py"), json.dumps(
        {"section": "peak", "threads": 1, "march": cap["march"]})], capture_output=True,
        text=True, cwd=BENCH, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])["rows"][0]
    assert row["lanes"] == 8 and "-march=haswell" in row["how"], row
    worker = tmp_path / "worker.py"  # run_worker's env: the caps, then the thread counts
    worker.write_text("import json, os\nprint(json.dumps({'rows': [{k: os.environ.get(k) for k "
                      "in ('OPENBLAS_CORETYPE', 'ONEDNN_MAX_CPU_ISA', 'TVM_NUM_THREADS')}]}))\n")
    rows, _, why = peers.run_worker(str(worker), sys.executable, {"env": cap["env"]}, 1)
    assert why is None and rows == [{"OPENBLAS_CORETYPE": "Haswell", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                     "TVM_NUM_THREADS": "1"}], (rows, why)


@pytest.mark.slow  # a process compiling three small GEMMs for AVX2: ~5 s of CPU
def test_gemm_class_times_another_class_against_numpy():
    """bench/gemm_class.py schedules for --target (AVX2 code runs on every x86 machine the
    suite runs on), checks each product against numpy and prints a row per case; a target
    this CPU cannot run is a clear error, not a crash."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("AVX2 code runs on x86 only")
    env = dict(os.environ, PYTHONPATH=ROOT, TVMFRONT_PROGRESS="0")
    script = os.path.join(BENCH, "gemm_class.py")
    out = subprocess.run([sys.executable, script, "--target", "x86:avx2", "--sizes", "64",
                          "--rounds", "1", "--threads", "1"], capture_output=True, text=True,
                         env=env, cwd=BENCH, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # case, tvmfront ms, GF/s, numpy ms, numpy's time / tvmfront's, rule
    rows = re.findall(r"^64 (A B|A B\^T|A\^T B) +([\d.]+) +(\d+) +([\d.]+) +([\d.]+)x  \S",
                      out.stdout, re.M)
    assert [r[0] for r in rows] == ["A B", "A B^T", "A^T B"], out.stdout
    assert all(float(r[1]) > 0 and float(r[4]) > 0 for r in rows), out.stdout
    bad = subprocess.run([sys.executable, script, "--target", "aarch64"], capture_output=True,
                         text=True, env=env, cwd=BENCH, timeout=300)
    assert bad.returncode != 0 and "cannot run code built for 'aarch64'" in bad.stderr, \
        bad.stderr[-2000:]


def test_interleaved_timing_alternates_and_pairs_rounds():
    """Blocks alternate (order reversed each round) and the ratio is per round: a contender
    twice as slow reads 2x although the machine's speed changes between rounds."""
    timing = _bench_module("_timing")
    calls, slowdown = [], [1.0]

    def work(name, ms):
        def fn():
            calls.append(name)
            deadline = time.perf_counter() + ms * slowdown[0] / 1e3
            while time.perf_counter() < deadline:
                pass
        return fn

    fast, slow = work("fast", 0.2), work("slow", 0.4)

    def drifting_slow():  # the machine gets slower after every round of the slow contender
        slow()
        if calls.count("slow") % 20 == 0:
            slowdown[0] *= 1.5

    blocks = timing.interleaved_medians({"fast": fast, "slow": drifting_slow}, rounds=4,
                                        block_seconds=0.005, rest_seconds=0.0)
    assert [len(v) for v in blocks.values()] == [4, 4]
    firsts = [calls[0]] + [b for a, b in zip(calls, calls[1:]) if a != b]
    assert firsts[:4] == ["fast", "slow", "fast", "slow"]  # fast, slow | slow, fast | ...
    assert 1.3 < timing.paired_ratio(blocks, "slow", "fast") < 3.5


def test_peers_help_lists_the_workload_sections():
    out = subprocess.run([sys.executable, os.path.join(BENCH, "peers.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for section in ("train", "infer", "ops", "compile", "transformer", "resnet", "tune"):
        assert f"\n  {section} " in out.stdout, section


def test_stand_ins_match_the_peers_description():
    workloads, models = _bench_module("_workloads"), _bench_module("_tvf_models")
    size = lambda m: sum(int(np.prod(p.shape)) for p in m.parameters())  # noqa: E731
    cfg = workloads.TRANSFORMER_PLACEHOLDER
    assert size(models.StandInCausalLM(**cfg["model"])) == workloads.transformer_params(cfg)
    assert size(models.causal_lm(cfg)[0]) == workloads.transformer_params(cfg)  # tvf.nn.CausalLM
    cfg = workloads.RESNET_PLACEHOLDER
    assert size(models.StandInResNet(cfg)) == workloads.resnet_params(cfg)
    # a projection shortcut where the channels or the stride change, identity elsewhere
    assert [b[3] for b in workloads.resnet_blocks(dict(cfg, stages=[[16, 2, 1], [32, 1, 2]]))] \
        == [False, False, True]


def test_optimizer_of_a_workload_config():
    models = _bench_module("_tvf_models")
    opt = models.optimizer({"optimizer": {"name": "AdamW", "lr": 3e-4, "betas": [0.9, 0.95],
                                          "eps": 1e-8, "weight_decay": 0.1, "max_norm": 1.0},
                            "source": "placeholder"})
    assert isinstance(opt, tvf.optim.Optimizer) and opt.name == "AdamW" and opt.lr == 3e-4
    assert opt.hyperparameters["weight_decay"] == 0.1
    assert opt.hyperparameters["max_norm"] == 1.0


def test_shapes_come_from_the_examples():
    """The peers' description matches the examples' models (resnet_shapes raises where
    make_model()'s parameter count differs from the description's)."""
    workloads, models = _bench_module("_workloads"), _bench_module("_tvf_models")
    size = lambda m: sum(int(np.prod(p.shape)) for p in m.parameters())  # noqa: E731
    cfg = models.resnet_shapes()
    assert cfg["source"] == "examples/resnet_digits.py"
    assert size(models.resnet(cfg)) == workloads.resnet_params(cfg) == cfg["params"]
    cfg = models.transformer_shapes()
    assert cfg["source"] == "examples/char_transformer.py"
    assert size(models.causal_lm(cfg)[0]) == cfg["params"]
    assert cfg["optimizer"]["name"] == models.optimizer(cfg).name


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the clock probe is x86 assembly")
def test_peak_probe_reads_a_physical_clock():
    # A chain of add-immediate ran at 20 GHz on a Sapphire-Rapids-class Xeon (its renamer
    # folds them): the "theoretical peak" printed beside the measured one was 2590 GFLOP/s.
    out = subprocess.run([sys.executable, os.path.join(BENCH, "_peer_numpy.py"),
                          json.dumps({"section": "peak", "threads": 1})], capture_output=True,
                         text=True, cwd=BENCH, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])["rows"][0]
    assert 0.3 < row["clock_ghz"] < 7.0, row
    assert row["gflops"] <= 1.1 * row["theoretical_gflops"], row
