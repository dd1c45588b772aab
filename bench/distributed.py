"""Data-parallel training on 1 and 2 processes (1 TVM thread each), and MPI's allreduce
against torch.distributed's gloo on the same buffers.

    python bench/distributed.py            # LeNet and the char Transformer, all buffer sizes
    python bench/distributed.py --quick    # fewer steps

Prints and writes bench/results/distributed.{txt,json,png}:
- samples/s at 1 process (the fused train step) and at 2 (each rank its own batch of the same
  size, gradients averaged every step: weak scaling, as DDP is measured), the scaling
  efficiency (2-process samples/s over twice the 1-process), and the step's parts on 2
  processes: gradients, allreduce (including the wait for the slower rank), update; and the
  allreduce of the same buffer alone, back to back;
- allreduce latency per buffer size: MPI blocking, MPI as tvmfront polls it, gloo.
The chart is drawn by .venv-bench's python (matplotlib), as bench/_chart.py is.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
VENV = os.path.join(ROOT, ".venv", "bin")
BENCH_PY = os.path.join(ROOT, ".venv-bench", "bin", "python")
MODELS = [("lenet", 32, 200), ("char", 16, 30)]  # (model, batch per rank, timed steps)
SIZES = [1_000, 10_000, 100_000, 1_000_000, 10_000_000]  # float32 elements


def _env():
    return dict(os.environ, PYTHONPATH=ROOT, TVM_NUM_THREADS="1", TVMFRONT_PROGRESS="0")


def _last_json(cmd, python_env=True):
    proc = subprocess.run(cmd, env=_env() if python_env else None, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train(model, batch, steps, processes):
    spec = json.dumps({"model": model, "batch": batch, "steps": steps})
    worker = [os.path.join(VENV, "python"), os.path.join(HERE, "_dist_train.py"), spec]
    return _last_json(worker if processes == 1 else
                      [os.path.join(VENV, "mpiexec"), "-n", str(processes), *worker])


def allreduce(sizes):
    arg = ",".join(map(str, sizes))
    script = os.path.join(HERE, "_dist_allreduce.py")
    rows = _last_json([os.path.join(VENV, "mpiexec"), "-n", "2", os.path.join(VENV, "python"),
                       script, "mpi", arg])["seconds"]
    if os.path.exists(BENCH_PY):
        for size, seconds in _last_json([BENCH_PY, script, "gloo", arg])["seconds"].items():
            rows[size].update(seconds)
    return rows


def report(results):
    lines = [f"load average before / after: {results['load_before']} / {results['load_after']}"
             f"; bench wall {results['wall_s']:.0f} s, CPU (user+sys, children) "
             f"{results['cpu_s']:.0f} s",
             "", "training, 1 TVM thread per process; 2 processes: each rank its own batch",
             f"{'model':<6} {'procs':>5} {'batch/rank':>10} {'samples/s':>10} {'step ms':>8} "
             f"{'CPU ms':>7} {'grads':>6} {'allred':>6} {'update':>6} {'allred %':>8} "
             f"{'alone ms':>8} {'efficiency':>10}"]
    single = {r["model"]: r for r in results["train"] if r["processes"] == 1}
    for row in results["train"]:
        two = row["processes"] > 1
        ms = lambda key: f"{1e3 * row[key]:.2f}" if two else "-"  # noqa: E731
        share = f"{100 * row['allreduce_s'] / row['step_s']:.0f}%" if two else "-"
        alone = f"{1e3 * row['allreduce_alone_s']['polled']:.3f}" if two else "-"
        eff = row["samples_per_s"] / (row["processes"] * single[row["model"]]["samples_per_s"])
        lines.append(
            f"{row['model']:<6} {row['processes']:>5} {row['batch_per_rank']:>10} "
            f"{row['samples_per_s']:>10.0f} {1e3 * row['step_s']:>8.2f} "
            f"{1e3 * row['cpu_s']:>7.2f} {ms('compute_s'):>6} {ms('allreduce_s'):>6} "
            f"{ms('apply_s'):>6} {share:>8} {alone:>8} {f'{eff:.2f}' if two else '-':>10}")
    for row in results["train"]:
        if row["processes"] > 1:
            split = 1e3 * single[row["model"]]["split_step_s"]
            lines.append(f"{row['model']}: one allreduce of {row['message_bytes']:,} bytes per "
                         f"step; on 1 process the split step (what a rank runs) takes "
                         f"{split:.2f} ms")
    variants = sorted({v for s in results["allreduce"].values() for v in s})
    lines += ["", "allreduce, 2 processes on this machine, float32 sum in place: us, "
                  "minimum / median",
              f"{'elements':>10} " + " ".join(f"{v:>24}" for v in variants)]
    for size, seconds in results["allreduce"].items():
        cells = [f"{1e6 * seconds[v]['min']:.1f} / {1e6 * seconds[v]['median']:.1f}"
                 if v in seconds else "n/a" for v in variants]
        lines.append(f"{int(size):>10} " + " ".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)


def chart(path_json, path_png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path_json) as f:
        results = json.load(f)
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.8))
    models = [m for m, _, _ in MODELS if any(r["model"] == m for r in results["train"])]
    for i, m in enumerate(models):
        rows = {r["processes"]: r for r in results["train"] if r["model"] == m}
        for j, p in enumerate(sorted(rows)):
            a.bar(i + 0.4 * j - 0.2, rows[p]["samples_per_s"] / rows[1]["samples_per_s"], 0.4,
                  color=["#9ecae1", "#08519c"][j], label=f"{p} process{'es' * (p > 1)}"
                  if i == 0 else None)
    a.axhline(2, color="gray", ls=":", lw=1)
    a.set_xticks(range(len(models)))
    a.set_xticklabels(models)
    a.set_ylabel("samples/s relative to 1 process")
    a.set_title("throughput (ideal at 2 processes: 2)")
    a.legend(fontsize=8)
    two = [r for r in results["train"] if r["processes"] == 2]
    left = [0.0] * len(two)
    for key, color, label in (("compute_s", "#31a354", "gradients"),
                              ("allreduce_s", "#e6550d", "allreduce (with wait)"),
                              ("apply_s", "#756bb1", "update")):
        widths = [100 * r[key] / r["step_s"] for r in two]
        b.barh(range(len(two)), widths, left=left, color=color, label=label)
        left = [x + w for x, w in zip(left, widths)]
    b.set_yticks(range(len(two)))
    b.set_yticklabels([f"{r['model']}\n{1e3 * r['step_s']:.1f} ms" for r in two])
    b.set_xlim(0, 100)
    b.set_xlabel("% of the step, 2 processes (the rest: batching, Python)")
    b.set_title("where a step's time goes")
    b.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    sizes = [int(s) for s in results["allreduce"]]
    for v in sorted({v for s in results["allreduce"].values() for v in s}):
        line = c.plot([4 * s for s in sizes], [1e6 * results["allreduce"][str(s)][v]["min"]
                                               if v in results["allreduce"][str(s)] else None
                                               for s in sizes], marker="o", label=v)[0]
        c.plot([4 * s for s in sizes], [1e6 * results["allreduce"][str(s)][v]["median"]
                                        if v in results["allreduce"][str(s)] else None
                                        for s in sizes], ls=":", color=line.get_color())
    c.set_xscale("log")
    c.set_yscale("log")
    c.set_xlabel("bytes")
    c.set_ylabel("us: minimum (solid), median (dotted)")
    c.set_title("allreduce between 2 processes")
    c.legend(fontsize=8)
    c.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path_png, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tenth of the steps")
    p.add_argument("--chart", nargs=2, metavar=("JSON", "PNG"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.chart:
        return chart(*args.chart)
    load_before = open("/proc/loadavg").read().split()[:3]
    start = time.perf_counter()
    results = {"train": [], "load_before": " ".join(load_before)}
    for model, batch, steps in MODELS:
        steps = max(5, steps // 10) if args.quick else steps
        for processes in (1, 2):  # 1 first: its compile fills the cache the ranks read
            row = train(model, batch, steps, processes)
            results["train"].append(row)
            print(f"{model} on {processes}: {row['samples_per_s']:.0f} samples/s", flush=True)
    lenet_elems = next(r["message_bytes"] for r in results["train"]
                       if r["processes"] == 2 and r["model"] == "lenet") // 4
    char_elems = next(r["message_bytes"] for r in results["train"]
                      if r["processes"] == 2 and r["model"] == "char") // 4
    results["allreduce"] = {str(k): v for k, v in allreduce(
        sorted(set(SIZES) | {lenet_elems, char_elems})).items()}
    results["wall_s"] = time.perf_counter() - start
    children = os.times()
    results["cpu_s"] = children.children_user + children.children_system
    results["load_after"] = " ".join(open("/proc/loadavg").read().split()[:3])
    text = report(results)
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, "distributed")
    with open(base + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(base + ".txt", "w") as f:
        f.write(text + "\n")
    if os.path.exists(BENCH_PY):
        subprocess.run([BENCH_PY, os.path.abspath(__file__), "--chart", base + ".json",
                        base + ".png"], check=True)
        print(f"chart: {base}.png")


if __name__ == "__main__":
    sys.exit(main())
