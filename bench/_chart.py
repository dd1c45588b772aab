"""Charts of bench/peers.py's results: runs in .venv-bench (matplotlib), in a subprocess, so that
the runtime environment needs no matplotlib.

    .venv-bench/bin/python bench/_chart.py bench/results/results.json bench/results train,ops
"""

import json
import os
import sys

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["tvmfront default", "tvmfront tuned", "PyTorch eager", "torch.compile", "JAX jit",
         "numpy (OpenBLAS)", "PyTorch", "PyTorch NCHW", "PyTorch channels_last"]
COLORS = {"tvmfront default": "#9ecae1", "tvmfront tuned": "#08519c", "PyTorch eager": "#fdae6b",
          "torch.compile": "#e6550d", "JAX jit": "#31a354", "numpy (OpenBLAS)": "#756bb1",
          "PyTorch": "#a63603", "PyTorch NCHW": "#fdae6b", "PyTorch channels_last": "#e6550d"}


TITLES = {"transformer": "char transformer: train step, inference, KV-cache decode (median ms)",
          "resnet": "ResNet, digits 32x32: train step, inference (median ms)"}


def _grouped(ax, cases, contenders, value, xlabel, log=False):
    """Horizontal bars: one group per case, one bar per contender that has a value."""
    height = 0.8 / max(1, len(contenders))
    for j, c in enumerate(contenders):
        ys, xs = [], []
        for i, case in enumerate(cases):
            v = value(case, c)
            if v is not None:
                ys.append(i + (j - (len(contenders) - 1) / 2) * height)
                xs.append(v)
        ax.barh(ys, xs, height=height, label=c, color=COLORS.get(c))
    ax.set_yticks(range(len(cases)))
    ax.set_yticklabels(cases)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if log:
        ax.set_xscale("log")
        plain = matplotlib.ticker.FormatStrFormatter("%g")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2, 5)))
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars


def _seconds(rows):
    table = {}
    for r in rows:
        if "seconds" in r:
            table[(r["case"], r["contender"])] = r["seconds"]
    return table


def chart_times(rows, title, path):
    t = _seconds(rows)
    cases = list(dict.fromkeys(r["case"] for r in rows))
    contenders = [c for c in ORDER if any((case, c) in t for case in cases)]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(cases) * max(1, len(contenders)) / 2 + 1.5))
    _grouped(ax, cases, contenders, lambda case, c: t.get((case, c)) and t[(case, c)] * 1e3,
             "median ms (log scale, shorter is faster)", log=True)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def chart_ops(rows, flops, path):
    t = _seconds(rows)
    cases = [c for c in dict.fromkeys(r["case"] for r in rows) if c in flops]
    contenders = [c for c in ORDER if any((case, c) in t for case in cases)]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _grouped(ax, cases, contenders,
             lambda case, c: t.get((case, c)) and flops[case] / t[(case, c)] / 1e9,
             "GFLOP/s (longer is faster)")
    peak = next((r["gflops"] for r in rows if r["case"] == "FMA peak" and "gflops" in r), None)
    if peak:
        ax.axvline(peak, color="k", ls="--", lw=1)
        ax.text(peak, -0.5, f" FMA peak {peak:.0f}", fontsize=7, va="bottom", ha="right")
    ax.set_title("GEMM and conv2d fp32", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def chart_compile(rows, path):
    models = list(dict.fromkeys(r["case"] for r in rows))
    kinds = ["cold", "cached, same process", "cached, new process"]
    fig, ax = plt.subplots(figsize=(7, 3))
    t = _seconds(rows)
    height = 0.8 / len(kinds)
    for j, k in enumerate(kinds):
        ys = [i + (j - 1) * height for i, m in enumerate(models) if (m, k) in t]
        xs = [t[(m, k)] for m in models if (m, k) in t]
        ax.barh(ys, xs, height=height, label=k)
    ax.axvline(5, color="r", ls=":", lw=1)
    ax.axvline(0.5, color="g", ls=":", lw=1)
    ax.set_yticks(range(len(models)))
    ax.set_yticklabels([f"{m} train step" for m in models])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log scale); dotted: targets 5 s cold, 0.5 s cached")
    ax.legend(fontsize=7)
    ax.set_title("tvmfront compile time", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def chart_tune(rows, path):
    r = next((r for r in rows if "trace" in r), None)
    if r is None:
        return False
    trace = [t for t in r["trace"] if t["step_us"] is not None]
    if not trace:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.step([0] + [t["elapsed"] for t in trace],
            [trace[0]["default_us"] / 1e3] + [t["step_us"] / 1e3 for t in trace], where="post")
    if r.get("t90"):
        ax.axvline(r["t90"]["elapsed"], color="r", ls=":", lw=1)
        ax.text(r["t90"]["elapsed"], ax.get_ylim()[1], " 90% of final gain", color="r",
                fontsize=7, va="top")
    ax.set_xlabel("tuning wall time, s")
    ax.set_ylabel("estimated kernel ms per step")
    ax.set_title("tvf.tune, LeNet train step: progress", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main():
    path, out, sections = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    with open(path) as f:
        results = json.load(f)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from peers import OPS, ops_flops  # stdlib-only module: safe to import here

    written = []
    for s in sections:
        rows = results.get(s, {}).get("rows", [])
        if not rows:
            continue
        png = os.path.join(out, f"{s}.png")
        if s == "train":
            chart_times(rows, "train step, batch 64 (median ms)", png)
        elif s == "infer":
            chart_times(rows, "inference (median ms)", png)
        elif s == "ops":
            chart_ops(rows, {k: ops_flops(v) for k, v in OPS.items()}, png)
        elif s == "compile":
            chart_compile(rows, png)
        elif s in TITLES:  # issue 11's workloads; the FMA peak row is no bar
            chart_times([r for r in rows if r["case"] != "FMA peak"], TITLES[s], png)
        elif s == "tune" and not chart_tune(rows, png):
            continue
        written.append(png)
    print("charts: " + (", ".join(os.path.relpath(p) for p in written) or "none"))


if __name__ == "__main__":
    main()
