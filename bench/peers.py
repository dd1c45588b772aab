"""tvmfront against PyTorch (eager, torch.compile), JAX (jit) and numpy, each in its own process.

    bash bench/setup.sh                          # once: .venv-bench with torch, JAX, matplotlib
    .venv/bin/python bench/peers.py              # train, infer, ops, compile
    .venv/bin/python bench/peers.py --only ops --tune-ops 64    # tune the op kernels inline
    .venv/bin/python bench/peers.py --slow       # also: tuning time to 90% of the final gain
    .venv/bin/python bench/peers.py --quick      # fewer timed runs, for a smoke test

Sections (--only a,b; default all but tune):
  train    train step, batch 64, MLP 64-256-256-10 and LeNet (examples/*_digits.py), SGD
           (momentum 0.9) and Adam
  infer    forward at batch 1 and 64, both models
  ops      GEMM 512/1024 and two 3x3 conv2d (batch 32) in GFLOP/s, with the measured FMA peak
  compile  cold compile of each model's train step (a fresh TVMFRONT_CACHE_DIR) and the cached
           rebuild: in the same process, and in a new process with the same cache dir
  transformer  examples/char_transformer.py's model and shapes (tvf.nn.CausalLM): train step
           (forward, cross-entropy, backward, AdamW with clipping), forward at batch 1 and 64,
           the one-token decode step with a KV cache (batch 1, mid-context position)
  resnet   examples/resnet_digits.py's ResNet: train step in train mode with the example's
           optimizer, inference at batch 1 and 64 in eval mode
           (both: the shapes of bench/_workloads.py's placeholders where an example is missing;
           the tables name the source; the tvmfront train step's GFLOP/s as % of the FMA peak)
  tune     (--slow) tune LeNet's train step with --tune-budget trials into a temporary records
           root; when did the estimated step time reach 90% of the final gain?

Contenders: "tvmfront default" (default schedules, records=False), "tvmfront tuned" (records
from --records, default the user store then <repo>/schedules, for this machine's target key; n/a without them),
PyTorch eager and torch.compile, JAX jit, numpy/OpenBLAS. tvmfront workers run with .venv's
python, the others with .venv-bench's (made by bench/setup.sh; a contender that is not
installed reads 'n/a (not installed)'). Each worker is its own process: BLAS libraries and
thread pools of different frameworks in one process distort each other's timings. Every time
is the median of many calls after warm-up (bench/_timing.py). The tables go to stdout and to
bench/results/<section>.txt, the charts to bench/results/<section>.png (drawn by matplotlib
from .venv-bench in a subprocess), the raw rows to bench/results/results.json.
"""

import argparse
import json
import os
import platform
import statistics
import shutil
import subprocess
import sys
import tempfile
import time

import _workloads
from _gemm_cases import gemm_flops

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RUNTIME_PY = os.path.join(ROOT, ".venv", "bin", "python")
BENCH_PY = os.environ.get("TVMFRONT_BENCH_PYTHON") or os.path.join(ROOT, ".venv-bench", "bin",
                                                                    "python")
SECTIONS = ["train", "infer", "ops", "compile", "transformer", "resnet", "tune"]
DEFAULT_SECTIONS = ["train", "infer", "ops", "compile", "transformer", "resnet"]
WORKLOADS = ["transformer", "resnet"]  # issue 11: shapes from the examples (_workloads.py)
HOW_TO_TUNE = {
    "train": "tvmfront tune examples/lenet_digits.py --budget 64 --only train_b64 (and "
             "examples/mlp_digits.py) writes them to the user store (~/.cache/tvmfront/schedules)",
    "infer": "tvmfront tune examples/lenet_digits.py --budget 64 --only infer_b1 --only "
             "infer_b64 (and examples/mlp_digits.py) writes them to the user store",
    "ops": "the op kernels are in no example: bench/peers.py --only ops --tune-ops 64 tunes "
           "them inline",
    "transformer": "tvmfront tune examples/char_transformer.py --budget 64 writes them to the "
                   "user store",
    "resnet": "tvmfront tune examples/resnet_digits.py --budget 64 writes them to the user store",
}

# ---- what is measured -------------------------------------------------------------------------
MODELS = ["mlp", "lenet"]
OPTIMIZERS = ["sgd", "adam"]
HYPER = {"sgd": {"lr": 1e-3, "momentum": 0.9},
         "adam": {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8}}
BATCH = 64
INFER_BATCHES = [1, 64]
OPS = {
    "gemm 512": {"kind": "gemm", "n": 512},
    "gemm 1024": {"kind": "gemm", "n": 1024},
    # the transposed forms gradients use, and the char Transformer's GEMMs (16 x 64 tokens,
    # d_model 128, qkv 384, feed-forward 512; attention's 64 (batch x heads) [64, 32] x [32, 64])
    "gemm 512 A B^T": {"kind": "gemm", "n": 512, "form": "A B^T"},
    "gemm 512 A^T B": {"kind": "gemm", "n": 512, "form": "A^T B"},
    "gemm 1024 A B^T": {"kind": "gemm", "n": 1024, "form": "A B^T"},
    "gemm 1024 A^T B": {"kind": "gemm", "n": 1024, "form": "A^T B"},
    "qkv 1024x128 @ 128x384^T": {"kind": "gemm", "m": 1024, "k": 128, "n": 384, "form": "A B^T"},
    "ff2 1024x512 @ 512x128^T": {"kind": "gemm", "m": 1024, "k": 512, "n": 128, "form": "A B^T"},
    "ff2 d/dw 512x1024 @ 1024x128": {"kind": "gemm", "m": 512, "k": 1024, "n": 128,
                                     "form": "A^T B"},
    "attention b64 64x32 @ 32x64": {"kind": "gemm", "batch": 64, "m": 64, "k": 32, "n": 64},
    "conv b32 32->64 @28": {"kind": "conv", "batch": 32, "cin": 32, "cout": 64, "hw": 28,
                            "kernel": 3, "pad": 1},
    "conv b32 64->64 @14": {"kind": "conv", "batch": 32, "cin": 64, "cout": 64, "hw": 14,
                            "kernel": 3, "pad": 1},
}

# --isa: every contender held to one CPU class below the host's, so that an AVX-512 machine
# stands in for an AVX2 one (AVX2 code on this core and its caches: a stand-in, not an AVX2
# CPU). tvmfront builds for the target; the peak probe is compiled for -march; the libraries
# take the environment: OpenBLAS its Haswell kernels, MKL (torch.mm) and oneDNN (PyTorch's
# convolutions) at most AVX2, ATen's own kernels AVX2, XLA's generated code AVX2. JAX's
# GEMMs call a library that none of these caps (1024^3 took the same time with and without
# them), so JAX jit keeps AVX-512 there: its column is the uncapped peer.
ISA_CAPS = {
    "avx2": {"target": "x86:avx2", "march": "haswell", "flags": {"avx2", "fma"},
             "env": {"OPENBLAS_CORETYPE": "Haswell", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                     "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                     "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}},
}

# (worker script, python, contenders it reports) per section
TVMFRONT = ("_peer_tvmfront.py", RUNTIME_PY, ["tvmfront default", "tvmfront tuned"])
WORKERS = {
    "train": [TVMFRONT, ("_peer_torch.py", BENCH_PY, ["PyTorch eager", "torch.compile"]),
              ("_peer_jax.py", BENCH_PY, ["JAX jit"])],
    "infer": [TVMFRONT, ("_peer_torch.py", BENCH_PY, ["PyTorch eager", "torch.compile"]),
              ("_peer_jax.py", BENCH_PY, ["JAX jit"])],
    "ops": [TVMFRONT, ("_peer_numpy.py", RUNTIME_PY, ["numpy (OpenBLAS)", "measured peak"]),
            ("_peer_torch.py", BENCH_PY, ["PyTorch", "PyTorch NCHW", "PyTorch channels_last"])],
}
for _w in WORKLOADS:
    WORKERS[_w] = WORKERS["train"]
NEEDS = {"_peer_torch.py": "torch", "_peer_jax.py": "jax"}
OURS = ["tvmfront default", "tvmfront tuned"]


def ops_flops(case):
    if case["kind"] == "gemm":
        return gemm_flops(case)
    out_hw = case["hw"] + 2 * case["pad"] - case["kernel"] + 1
    return 2.0 * case["batch"] * case["cout"] * case["cin"] * case["kernel"] ** 2 * out_hw ** 2


# ---- running workers --------------------------------------------------------------------------
def installed(python, module):
    """None when `module` imports with `python`, else why not."""
    if not os.path.exists(python):
        print(f"{python} missing: bash bench/setup.sh makes it", file=sys.stderr)
        return "not installed"
    if module is None:
        return None
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    return None if probe.returncode == 0 else "not installed"


def run_worker(script, python, spec, threads, timeout=3600, extra_env=None):
    """(rows, info, None) or (None, None, why it failed). torch.compile gets a fresh
    inductor cache every time: its first-call time is a cold compile, as tvmfront's is.
    The spec's "env" (--isa's caps) goes into every worker's environment."""
    scratch = tempfile.mkdtemp(prefix="tvmfront-bench-")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), TVM_NUM_THREADS=str(threads),
               TVMFRONT_PROGRESS="0", TORCHINDUCTOR_CACHE_DIR=os.path.join(scratch, "inductor"),
               **spec.get("env", {}), **(extra_env or {}))
    if python == RUNTIME_PY:  # this checkout's tvmfront, not one installed into .venv
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    spec = dict(spec, threads=threads)
    try:
        out = subprocess.run([python, os.path.join(HERE, script), json.dumps(spec)],
                             capture_output=True, text=True, env=env, timeout=timeout, cwd=HERE)
    except subprocess.TimeoutExpired:
        return None, None, f"timed out after {timeout} s"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        err = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        return None, None, f"error: {err[:160]}"
    result = json.loads(lines[-1])
    return result["rows"], result.get("info", {}), None


def run_section(section, spec, args, log):
    """Every worker of the section, --rounds times in turn; per (case, contender) the row
    with the smallest median is kept (background load only ever makes a median larger)."""
    best, infos, failed = {}, {}, {}
    missing = {script: installed(python, NEEDS.get(script))
               for script, python, _ in WORKERS[section]}
    for round_ in range(args.rounds):
        if round_ and spec.get("tune_ops"):  # tuned once: later rounds build with its records
            spec = dict(spec, tune_ops=0, records=spec["tune_ops_records"])
        for script, python, contenders in WORKERS[section]:
            why = missing[script]
            if why is None:
                t0 = time.perf_counter()
                got, info, why = run_worker(script, python, dict(spec, section=section),
                                            args.threads)
                log(f"  {script} ({section}, round {round_ + 1}): "
                    f"{time.perf_counter() - t0:.0f} s" + (f", {why}" if why else ""))
                for r in got or []:
                    k = (r["case"], r["contender"])
                    ratios = best.get(k, {}).get("paired_numpy_ratios", []) + \
                        ([r["paired_numpy_ratio"]] if "paired_numpy_ratio" in r else [])
                    if k not in best or r.get("seconds", 1e30) < best[k].get("seconds", 1e30):
                        best[k] = dict(r, rounds=best.get(k, {}).get("rounds", 0) + 1)
                    else:
                        best[k]["rounds"] = best[k].get("rounds", 0) + 1
                    if ratios:  # every round's interleaved ratio (the table takes the median)
                        best[k]["paired_numpy_ratios"] = ratios
                if got is not None:
                    infos[script] = info
            for c in contenders:
                if why and not any(k[1] == c for k in best):
                    failed[c] = why
    return list(best.values()), infos, failed


# ---- tables -----------------------------------------------------------------------------------
def fmt_ms(s):
    ms = s * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def cell(rows, case, contender, failed, value=lambda r: fmt_ms(r["seconds"])):
    for r in rows:
        if r["case"] == case and r["contender"] == contender:
            if "seconds" in r:
                return value(r)
            if "na" in r:  # the reason's head: the footnote under the table says the rest
                why = r["na"].split(" (")[0]
                return "n/a (" + ("no records" if why.startswith("no records") else why) + ")"
            return "n/a (error)"
    return f"n/a ({failed[contender]})" if contender in failed else "n/a"


def seconds_of(rows, case, contender):
    for r in rows:
        if r["case"] == case and r["contender"] == contender and "seconds" in r:
            return r["seconds"]
    return None


def paired_of(rows, case):
    """tvmfront default's speed against numpy timed interleaved in one process (numpy's time /
    ours, median over rounds; bench/_timing.interleaved_medians), or None."""
    for r in rows:
        if r["case"] == case and r["contender"] == "tvmfront default":
            ratios = r.get("paired_numpy_ratios") or \
                ([r["paired_numpy_ratio"]] if "paired_numpy_ratio" in r else [])
            return statistics.median(ratios) if ratios else None
    return None


def render(header, body):
    widths = [max(len(str(r[i])) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    rule = line(["-" * w for w in widths])
    return "\n".join([line(header), rule] + [line(r) for r in body])


def speed_table(rows, failed, cases, peers, title):
    """Times in ms per contender, then each tvmfront variant's speedup over the fastest peer
    (fastest peer time / tvmfront time: > 1 means tvmfront is faster)."""
    contenders = OURS + peers
    header = ["case"] + [f"{c} ms" for c in contenders] + ["fastest peer"] + \
        [f"{c.split()[1]} speedup" for c in OURS]
    body = []
    for case in cases:
        row = [case] + [cell(rows, case, c, failed) for c in contenders]
        row += speedup_cells(rows, case, peers)
        body.append(row)
    return f"{title}\n" + render(header, body) + \
        "\n(speedup = fastest peer's median time / tvmfront's: above 1x tvmfront is faster)"


def speedup_cells(rows, case, peers):
    """[the fastest peer's name, then for each of our contenders: fastest peer's time / ours]."""
    peer_times = {c: seconds_of(rows, case, c) for c in peers}
    peer_times = {c: t for c, t in peer_times.items() if t is not None}
    best = min(peer_times, key=peer_times.get) if peer_times else None
    cells = [best or "-"]
    for c in OURS:
        t = seconds_of(rows, case, c)
        cells.append(f"{peer_times[best] / t:.2f}x" if best and t else "-")
    return cells


def ops_table(rows, failed):
    """Two tables (GEMM: numpy and torch.mm as peers; conv: PyTorch NCHW and channels_last):
    median ms, GFLOP/s and % of the measured FMA peak per contender, then the speedups."""
    peak = next((r for r in rows if r["case"] == "FMA peak" and "gflops" in r), None)
    peak_g = peak["gflops"] if peak else None
    parts = []
    for kind, peers in (("gemm", ["numpy (OpenBLAS)", "PyTorch"]),
                        ("conv", ["PyTorch NCHW", "PyTorch channels_last"])):
        contenders = OURS + peers
        header = ["case", "GFLOP"] + contenders + ["fastest peer"] + \
            [f"{c.split()[1]} speedup" for c in OURS]
        body = []
        for case, spec in OPS.items():
            if spec["kind"] != kind:
                continue
            flop = ops_flops(spec)

            def value(r, flop=flop):
                g = flop / r["seconds"] / 1e9
                return f"{fmt_ms(r['seconds'])} ms {g:.0f} GF/s" + \
                    (f" {100 * g / peak_g:.0f}%" if peak_g else "")

            row = [case, f"{flop / 1e9:.2f}"] + [cell(rows, case, c, failed, value)
                                                 for c in contenders]
            row += speedup_cells(rows, case, peers)
            if kind == "gemm":
                paired = paired_of(rows, case)
                row.append(f"{paired:.2f}x" if paired else "-")
            body.append(row)
        if kind == "gemm":
            header = header + ["default vs numpy, interleaved"]
        parts.append(render(header, body))
    text = ("ops: median ms, GFLOP/s, % of the measured FMA peak (GEMM: PyTorch = torch.mm; "
            "conv: 3x3, padding 1, no bias)\n" + "\n\n".join(parts))
    if peak:
        text += f"\nmeasured FMA peak: {peak_g:.0f} GFLOP/s ({peak['how']})"
    else:
        text += "\nmeasured FMA peak: n/a"
    return text + ("\n(speedup = fastest peer's median time / tvmfront's: above 1x tvmfront is "
                   "faster; 'interleaved': numpy's time / tvmfront default's, both timed in one "
                   "process in alternating ~0.1 s blocks, median over the rounds' ratios: "
                   "steady where separate runs drift with the machine)")


def compile_table(rows, train_rows):
    header = ["model (train step, Adam)", "cold s", "cached, same process s",
              "cached, new process s", "new process: import tvmfront s",
              "new process: TVM import s (first compile)",
              "torch.compile first call s (sgd / adam)", "JAX jit first call s (sgd / adam)"]
    body = []
    for m in MODELS:
        get = lambda c, m=m: next((r for r in rows if r["case"] == m and r["contender"] == c),  # noqa: E731
                                  None)
        cells = []
        for c in ("cold", "cached, same process", "cached, new process"):
            r = get(c)
            cells.append(f"{r['seconds']:.3f}" + ("" if r.get("cache") in ("hit", "miss")
                                                  else f" ({r.get('cache')})")
                         if r and "seconds" in r else "n/a")
        r = get("cached, new process")
        for k in ("import_s", "tvm_import_s"):
            cells.append(f"{r[k]:.2f}" if r and k in r else "n/a")
        for c in ("torch.compile", "JAX jit"):
            firsts = [next((f"{r['compile_s']:.2f}" for r in train_rows if r["case"] == f"{m} {o}"
                            and r["contender"] == c and "compile_s" in r), "-")
                      for o in OPTIMIZERS]
            cells.append(" / ".join(firsts))
        body.append([m] + cells)
    return ("compile: tvmfront train step (records=False), TVMFRONT_CACHE_DIR a fresh temp dir\n"
            + render(header, body) +
            "\n(cold: first compile in a new process, cache empty; cached, same process: the same"
            " compile_training call again; cached, new process: another process, same cache dir,"
            " import not included; import tvmfront: `import tvmfront` alone in that process (it"
            " imports no TVM); TVM import: TVM and its Relax, TE and S-TIR modules, which a"
            " process's first compile or load imports once (not in the cold column);"
            " torch.compile / JAX: the first call of their train step in"
            " the train section, when it ran: one worker process compiles mlp sgd, mlp adam,"
            " lenet sgd, lenet adam in turn, so only mlp sgd pays the process's first-compile"
            " costs as tvmfront's cold column does)")


def tune_table(rows):
    r = next((r for r in rows if r["contender"] == "tvmfront tune"), None)
    if r is None or "seconds" not in r:
        return "tune: n/a" + (f" ({r.get('error')})" if r else "")
    t90 = r.get("t90")
    trace = [t for t in r["trace"] if t["step_us"] is not None]
    lines = [f"tune: LeNet train step (Adam, batch 64), budget {r['trials']} trials "
             f"({r['failed']} failed), stopped: {r['stopped']}",
             f"  tuning wall time {r['search_s']:.0f} s (tvf.tune in all, with the rebuild: "
             f"{r['seconds']:.0f} s)"]
    for t in trace:
        lines.append(f"  after {t['trials']:>4} trials, {t['elapsed']:>5.0f} s of tuning: measured "
                     f"step {t['step_us'] / 1e3:.3f} ms (default {t['default_us'] / 1e3:.3f} ms)")
    if t90:
        lines.append(f"  90% of the final gain reached after {t90['elapsed']:.0f} s "
                     f"({t90['trials']} trials)")
    else:
        lines.append("  90% point: n/a (no checkpoint measured faster than the default)")
    lines.append(f"  end to end median step: default {r['default_step_s'] * 1e3:.3f} ms, tuned "
                 f"{r['tuned_step_s'] * 1e3:.3f} ms "
                 f"({r['default_step_s'] / r['tuned_step_s']:.2f}x)")
    return "\n".join(lines)


# ---- targets (issue 4) ------------------------------------------------------------------------
def targets(results):
    out = []

    def best_peer(rows, case, peers):
        ts = [seconds_of(rows, case, p) for p in peers]
        ts = [t for t in ts if t is not None]
        return min(ts) if ts else None

    def verdict(ok):
        return "n/a" if ok is None else "MET" if ok else "not met"

    if "train" in results:
        rows = results["train"][0]
        for m in MODELS:
            for o in OPTIMIZERS:
                case = f"{m} {o}"
                t, p = seconds_of(rows, case, "tvmfront tuned"), best_peer(
                    rows, case, ["PyTorch eager", "torch.compile", "JAX jit"])
                s = p / t if t and p else None
                out.append((f"tuned train step {case} >= 1.5x faster than fastest peer",
                            f"{s:.2f}x" if s else "n/a", verdict(s and s >= 1.5 if s else None)))
    if "infer" in results:
        rows = results["infer"][0]
        for m in MODELS:
            case = f"{m} b1"
            t = seconds_of(rows, case, "tvmfront tuned") or None
            p = best_peer(rows, case, ["PyTorch eager", "torch.compile", "JAX jit"])
            s = p / t if t and p else None
            out.append((f"tuned batch-1 inference {m} >= 2x faster than fastest peer",
                        f"{s:.2f}x" if s else "n/a", verdict(s >= 2 if s else None)))
    if "ops" in results:
        rows = results["ops"][0]
        t, p = seconds_of(rows, "gemm 1024", "tvmfront tuned"), \
            seconds_of(rows, "gemm 1024", "numpy (OpenBLAS)")
        s = p / t if t and p else None
        out.append(("tuned GEMM 1024 >= 0.95x numpy", f"{s:.2f}x" if s else "n/a",
                    verdict(s >= 0.95 if s else None)))
        for case in [c for c, v in OPS.items() if v["kind"] == "gemm"]:  # issue 12 item 1
            s = paired_of(rows, case)
            how = "interleaved"
            if s is None:  # a run without the interleaved timing: the separate medians
                t, p = seconds_of(rows, case, "tvmfront default"), \
                    seconds_of(rows, case, "numpy (OpenBLAS)")
                s, how = (p / t if t and p else None), "separate runs"
            out.append((f"default {case} >= 0.9x numpy ({how})", f"{s:.2f}x" if s else "n/a",
                        verdict(s >= 0.9 if s else None)))
        for case in [c for c in OPS if c.startswith("conv")]:
            t = seconds_of(rows, case, "tvmfront tuned")
            p = best_peer(rows, case, ["PyTorch NCHW", "PyTorch channels_last"])
            s = p / t if t and p else None
            out.append((f"tuned {case} >= 1.5x faster than better torch layout",
                        f"{s:.2f}x" if s else "n/a", verdict(s >= 1.5 if s else None)))
    if "compile" in results:
        rows = results["compile"][0]
        cold = next((r for r in rows if r["case"] == "lenet" and r["contender"] == "cold"), {})
        out.append(("cold compile of LeNet train step < 4 s (issue 12)",
                    f"{cold['seconds']:.2f} s" if "seconds" in cold else "n/a",
                    verdict(cold["seconds"] < 4 if "seconds" in cold else None)))
        for c in ("cached, same process", "cached, new process"):
            r = next((r for r in rows if r["case"] == "lenet" and r["contender"] == c), {})
            out.append((f"cached rebuild of LeNet train step < 0.5 s ({c})",
                        f"{r['seconds']:.3f} s" if "seconds" in r else "n/a",
                        verdict(r["seconds"] < 0.5 if "seconds" in r else None)))
    for section in WORKLOADS:
        if section in results:
            out += workload_targets(section, results[section][0])
    if not out:
        return ""
    return "targets (issues 4, 11 and 12)\n" + render(["target", "measured", "verdict"],
                                          [list(t) for t in out])


# ---- main -------------------------------------------------------------------------------------
def cpu_flags():
    """The first CPU's flags in /proc/cpuinfo (an empty set where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(ln.split(":", 1)[1].split()) for ln in f
                         if ln.startswith("flags")), set())
    except OSError:
        return set()


def machine_note(threads):
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"machine: {model}, {os.cpu_count()} CPUs, load average {load:.2f} at start; "
            f"{threads} thread(s) per contender; {time.strftime('%Y-%m-%d %H:%M')}")


def measure(section, base, args, log):
    """(rows, worker infos, {contender: why it has no rows}) of one section."""
    if section == "train":
        spec = dict(base, models=MODELS, optimizers=OPTIMIZERS, hyper=HYPER, batch=BATCH)
        return run_section(section, spec, args, log)
    if section == "infer":
        return run_section(section, dict(base, models=MODELS, batches=INFER_BATCHES), args, log)
    if section == "ops":
        paired_rounds = min(args.paired_rounds, 2) if args.quick else args.paired_rounds
        spec = dict(base, ops=OPS, tune_ops=args.tune_ops, paired_rounds=paired_rounds,
                    tune_ops_records=os.path.abspath(args.tune_ops_records))
        return run_section(section, spec, args, log)
    if section in WORKLOADS:
        return measure_workload(section, base, args, log)
    if section == "compile":
        rows = []
        for m in MODELS:
            cache = tempfile.mkdtemp(prefix="tvmfront-bench-cache-")
            for sub, contender in (("compile", "cold"), ("cached", "cached, new process")):
                got, _, why = run_worker("_peer_tvmfront.py", RUNTIME_PY,
                                         dict(base, section=sub, model=m), args.threads,
                                         extra_env={"TVMFRONT_CACHE_DIR": cache})
                rows += got or [{"section": "compile", "case": m, "contender": contender,
                                 "error": why}]
            shutil.rmtree(cache, ignore_errors=True)
        return rows, {}, {}
    got, _, why = run_worker("_peer_tvmfront.py", RUNTIME_PY,
                             dict(base, section="tune", model="lenet", budget=args.tune_budget),
                             args.threads)
    return got or [{"section": "tune", "case": "lenet", "contender": "tvmfront tune",
                    "error": why}], {}, {}


PEAK = {}  # the FMA peak row, measured once per run (the workload sections' "what bounds it")


def measure_workload(section, base, args, log):
    """The example's shapes (the tvmfront worker reads them: examples/ import tvmfront), then
    every worker with them, then the FMA peak. infos["config"]: the shapes."""
    got, _, why = run_worker("_peer_tvmfront.py", RUNTIME_PY,
                             dict(base, section="shapes", workload=section), args.threads)
    if why:
        log(f"  shapes of {section}: {why}")
        return [], {}, {c: why for c in OURS + PEERS}
    config = got[0]["config"]
    rows, infos, failed = run_section(section, dict(base, config=config), args, log)
    if "row" not in PEAK:
        peak, _, why = run_worker("_peer_numpy.py", RUNTIME_PY, dict(base, section="peak"),
                                  args.threads)
        PEAK["row"] = peak[0] if peak else {"case": "FMA peak", "contender": "measured peak",
                                            "error": why}
    infos["config"] = config
    return rows + [dict(PEAK["row"], section=section)], infos, failed


PEERS = ["PyTorch eager", "torch.compile", "JAX jit"]


def workload_flops(section, config, batch):
    """FLOPs of a train step (batch None: the config's train batch) or of one forward."""
    if section == "transformer":
        fwd = _workloads.transformer_forward_flops(config, batch or config["batch"],
                                                   config["seq"])
    else:
        fwd = _workloads.resnet_forward_flops(config, batch or config["batch"])
    return _workloads.train_flops(fwd) if batch is None else fwd


def describe_config(section, c):
    o = c["optimizer"]
    opt = f"{o['name']}(lr={o['lr']}, weight_decay={o.get('weight_decay')}" + (
        f", max_norm={o['max_norm']})" if o.get("max_norm") else ")")
    if section == "transformer":
        m = c["model"]
        return (f"CausalLM vocab {m['vocab_size']}, context {m['context']}, d_model "
                f"{m['d_model']}, {m['nhead']} heads, {m['num_layers']} layers, ff "
                f"{m['dim_feedforward']}; train batch {c['batch']} x {c['seq']} tokens; "
                f"{c['params']} parameters; {opt}; shapes: {c['source']}")
    stages = ", ".join(f"{ch}x{n}/s{st}" for ch, n, st in c["stages"])
    return (f"ResNet input {'x'.join(map(str, c['x_shape']))}, stem {c['stem']}, stages "
            f"(channels x blocks / stride) {stages}, {c['classes']} classes; train batch "
            f"{c['batch']}; {c['params']} parameters; {opt}; shapes: {c['source']}")


def workload_cases(rows):
    return [c for c in dict.fromkeys(r["case"] for r in rows) if c != "FMA peak"]


def ours_best(rows, case):
    """(contender, seconds) of tvmfront's faster variant on `case` (tuned where it ran)."""
    times = {c: seconds_of(rows, case, c) for c in OURS}
    times = {c: t for c, t in times.items() if t is not None}
    return min(times.items(), key=lambda kv: kv[1]) if times else (None, None)


def workload_targets(section, rows):
    """[(target, measured, verdict)]: the issue's ratios, tvmfront's faster variant against the
    fastest peer on the train step and against PyTorch eager on the decode step."""
    out = []
    for case in workload_cases(rows):
        kind = case.split()[0]
        if kind == "train":
            peers, goal, what = PEERS, 1.5, "fastest peer"
        elif kind == "decode":
            peers, goal, what = ["PyTorch eager"], 2.0, "PyTorch eager"
        else:
            continue
        ours, t = ours_best(rows, case)
        ts = [seconds_of(rows, case, p) for p in peers]
        ts = [x for x in ts if x is not None]
        s = min(ts) / t if t and ts else None
        out.append((f"{section} {case}: {ours or 'tvmfront'} >= {goal:g}x faster than {what}",
                    f"{s:.2f}x" if s else "n/a",
                    "n/a" if s is None else "MET" if s >= goal else "not met"))
    return out


def bound_lines(section, rows, config):
    """What bounds the train step: its GFLOP/s as % of the measured FMA peak, per contender."""
    peak = next((r for r in rows if r["case"] == "FMA peak" and "gflops" in r), None)
    case = next((c for c in workload_cases(rows) if c.startswith("train")), None)
    if case is None:
        return []
    flop = workload_flops(section, config, None)
    lines = [f"what bounds it: the train step is {flop / 1e9:.2f} GFLOP (3x the forward's "
             f"GEMM, convolution and attention FLOPs); measured FMA peak "
             + (f"{peak['gflops']:.0f} GFLOP/s ({peak.get('threads')} thread(s))" if peak
                else "n/a")]
    for c in OURS + PEERS:
        t = seconds_of(rows, case, c)
        if t:
            g = flop / t / 1e9
            lines.append(f"  {c}: {g:.1f} GFLOP/s" + (f" = {100 * g / peak['gflops']:.1f}% of "
                                                     f"the peak" if peak else ""))
    return lines


def workload_text(section, results):
    rows, infos, failed = results[section]
    config = infos.get("config")
    if config is None:
        return f"{section}: n/a ({next(iter(failed.values()), 'no shapes')})"
    title = {"transformer": "transformer (char LM): median ms per call (train step: forward, "
                            "cross-entropy, backward, optimizer; infer bB: forward of B "
                            "sequences; decode: one token, KV cache)",
             "resnet": "resnet (digits 32x32): median ms per call (train step in train mode; "
                       "infer bB: forward of B images in eval mode)"}[section]
    text = describe_config(section, config) + "\n" + speed_table(
        rows, failed, workload_cases(rows), PEERS, title)
    goals = workload_targets(section, rows)
    if goals:
        text += "\n" + render(["target", "measured", "verdict"], [list(g) for g in goals])
    return "\n".join([text] + bound_lines(section, rows, config))


def section_text(section, results):
    """The printed table of one section (results: {section: (rows, infos, failed)})."""
    rows, _, failed = results[section]
    if section == "train":
        text = speed_table(
            rows, failed, [f"{m} {o}" for m in MODELS for o in OPTIMIZERS],
            ["PyTorch eager", "torch.compile", "JAX jit"],
            f"train step, batch {BATCH}: median ms per step (forward, loss, backward, update)")
    elif section == "infer":
        text = speed_table(
            rows, failed, [f"{m} b{b}" for m in MODELS for b in INFER_BATCHES],
            ["PyTorch eager", "torch.compile", "JAX jit"],
            "inference: median ms per forward (numpy in, numpy out)")
    elif section == "ops":
        text = ops_table(rows, failed)
    elif section == "compile":
        return compile_table(rows, results.get("train", ([],))[0])
    elif section in WORKLOADS:
        text = workload_text(section, results)
    else:
        return tune_table(rows)
    if any(r.get("contender") == "tvmfront tuned" and "no records" in r.get("na", "")
           for r in rows):
        text += ("\ntvmfront tuned n/a: no records for this target key or for those kernels; "
                 + HOW_TO_TUNE[section])
    return text


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--only", default=None, help=f"comma-separated sections of {SECTIONS}")
    p.add_argument("--slow", action="store_true", help="also the tune section")
    p.add_argument("--quick", action="store_true", help="few timed runs (smoke test)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every worker this many times in turn, keep each contender's best "
                        "median (train, infer, ops)")
    p.add_argument("--paired-rounds", type=int, default=9,
                   help="ops: rounds of the GEMMs' interleaved timing against numpy in one "
                        "process (0: none)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads of every contender (default: all CPUs)")
    p.add_argument("--records", default=None,
                   help="records root of 'tvmfront tuned' (default TVMFRONT_RECORDS or "
                        "the user store, then <repo>/schedules)")
    p.add_argument("--tune-ops", type=int, default=0, metavar="N",
                   help="ops: tune each op kernel inline with N trials (records into "
                        "--tune-ops-records) for the tuned column")
    p.add_argument("--tune-ops-records", default=os.path.join(ROOT, ".cache", "bench-records"))
    p.add_argument("--tune-budget", type=int, default=64, help="trials of the tune section")
    p.add_argument("--isa", choices=["native", *ISA_CAPS], default="native",
                   help="avx2: every contender held to AVX2 (tvmfront's target x86:avx2, the "
                        "peak probe -march=haswell, OpenBLAS/MKL/oneDNN/ATen/XLA capped), so "
                        "that an AVX-512 machine stands in for an AVX2 one; JAX's GEMMs stay "
                        "uncapped")
    p.add_argument("--out", default=os.path.join(HERE, "results"),
                   help="where tables (.txt), charts (.png) and results.json go ('' for none)")
    p.add_argument("--note", default="", help="a line added to every saved table")
    p.add_argument("--render", action="store_true",
                   help="measure nothing: print and save the tables and charts of --out's "
                        "results.json again (the sections of --only, else all saved)")
    args = p.parse_args()
    sections = args.only.split(",") if args.only else \
        DEFAULT_SECTIONS + (["tune"] if args.slow or args.render else [])
    for s in sections:
        if s not in SECTIONS:
            p.error(f"unknown section {s!r}; sections: {SECTIONS}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    timing = {"min_runs": 5, "min_seconds": 0.1} if args.quick else {}
    base = dict(timing, records=args.records and os.path.abspath(args.records))
    if args.isa != "native":
        cap = ISA_CAPS[args.isa]
        missing = cap["flags"] - cpu_flags()
        if missing:
            p.error(f"--isa {args.isa}: this CPU lacks {', '.join(sorted(missing))}")
        base.update(target=cap["target"], march=cap["march"], env=cap["env"])
    results, texts = {}, {}
    if args.render:  # tables and charts again from the saved rows; nothing is measured
        with open(os.path.join(args.out, "results.json")) as f:
            saved = json.load(f)
        results = {s: (v["rows"], v["info"], v["failed"]) for s, v in saved.items()
                   if s in sections}
        texts = {}
        for section in results:
            texts[section] = section_text(section, results)
            print(f"\n{saved[section]['note']}\n\n{texts[section]}", flush=True)
        summary = targets(results)
        print("\n" + summary, flush=True)
        save(args, os.path.join(args.out, "results.json"), saved, results, texts, summary)
        return
    note = machine_note(args.threads) + (f"\n{args.note}" if args.note else "")
    if args.isa != "native":
        note += (f"\n--isa {args.isa}: a stand-in for an {args.isa.upper()} machine, not one: "
                 f"tvmfront built for {base['target']}, the peak probe for -march="
                 f"{base['march']}, the peers' libraries capped ("
                 + ", ".join(f"{k}={v}" for k, v in base["env"].items())
                 + "); JAX's GEMMs are not capped")
    print(note, flush=True)
    for section in sections:
        t0 = time.perf_counter()
        log(f"[{section}]")
        results[section] = measure(section, base, args, log)
        texts[section] = section_text(section, results)
        log(f"[{section}] {time.perf_counter() - t0:.0f} s")
        print("\n" + texts[section], flush=True)
    # The targets over this run's sections and, when saving, the other sections' latest saved
    # results (a section run on its own keeps the others' verdicts; they are marked as such).
    path = os.path.join(args.out, "results.json") if args.out else None
    saved = {}
    if path and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
    earlier = {s: (v["rows"], v["info"], v["failed"]) for s, v in saved.items()
               if s not in results}
    summary = targets(dict(earlier, **results))
    if earlier and summary:
        summary += "\n(sections from an earlier run: " + ", ".join(
            f"{s}: {saved[s]['note'].splitlines()[0].rsplit('; ', 1)[-1]}" for s in earlier) + ")"
    if summary:
        print("\n" + summary, flush=True)
    if path:
        saved.update({s: {"rows": r[0], "info": r[1], "failed": r[2], "note": note}
                      for s, r in results.items()})
        save(args, path, saved, results, texts, summary)


def save(args, path, saved, results, texts, summary):
    """Tables (each under the note of the run that measured it), results.json, charts."""
    os.makedirs(args.out, exist_ok=True)
    for section, text in texts.items():
        with open(os.path.join(args.out, f"{section}.txt"), "w") as f:
            f.write(saved[section]["note"] + "\n\n" + text + "\n")
    if summary:
        notes = list(dict.fromkeys(v["note"] for v in saved.values()))
        with open(os.path.join(args.out, "targets.txt"), "w") as f:
            f.write("\n".join(notes) + "\n\n" + summary + "\n")
    with open(path, "w") as f:
        json.dump(saved, f, indent=1)
    why = installed(BENCH_PY, "matplotlib")
    if why:
        print(f"charts: n/a (matplotlib {why})")
        return
    out = subprocess.run([BENCH_PY, os.path.join(HERE, "_chart.py"), path, args.out,
                          ",".join(results)], capture_output=True, text=True)
    print(out.stdout.strip() or f"charts failed: {out.stderr.strip()[-300:]}")


if __name__ == "__main__":
    sys.exit(main())
