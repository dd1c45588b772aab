"""Where a cold compile's time goes: LeNet's train step (examples/lenet_digits.py, batch 64,
Adam, default schedules, no records) compiled into an empty compile cache, stage by stage.

    .venv/bin/python bench/compile_time.py [--repeats 3] [--compare] [--profile FILE]

Each repeat runs in a fresh process with TVMFRONT_CACHE_DIR a fresh temporary folder; the
table shows each stage's median wall and CPU seconds over the repeats (CPU: this process
of the thread that ran the stage; TOTAL: every thread of this process; the linker's
subprocess counts in wall time alone). Stages of the main thread, then:
  import        import tvmfront (not part of the compile total)
  trace         model + loss traced to Relax (graph.build_training)
  gradient, append_optimizer, lowering stages (legalize, fuse_ops, fuse_tir, ...): pipeline.run
  schedule      default CPU schedules for every kernel (schedule.default_cpu_schedule; the
                side kernels' chunks are scheduled while the side threads compile the
                chunks before them: build._compile_streamed)
  tir passes    tvm.compile minus LLVM code generation (TIR lowering, VM codegen)
  llvm codegen  TIR -> optimized LLVM IR (tirx.build.codegen_build)
  llvm object   LLVM IR -> machine code (Module.write_to_file inside export_library)
  side kernels  the kernels tvmfront.split_build compiles in a thread per core meanwhile
                (TIR passes, LLVM codegen and object), summed over its threads: overlaps the
                stages above in wall time
  wait for side threads   the main thread waiting for them, before the link
  link          the shared library link (tvm.support.cc.create_shared)
  load          loading the library back (build._load)
  other         the rest of compile_training (cache key, manifest, module setup)
--compare also times the baseline (TVM's argument asserts in every kernel, all kernels in
one thread, LLVM -O3: TVM's defaults, what this bench's first version measured), its runs
alternating with the others.
--profile FILE also writes one repeat's cProfile stats there (pstats format).
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SIDE = "side kernels (threads)"  # tvmfront.split_build: built while the main thread compiles
ORDER = ["import", "trace", "gradient", "append_optimizer", "lower_grad_calls", "legalize",
         "annotate_patterns", "unfused_multi_output", "fold_constants", "fuse_ops", "fuse_tir",
         "dead_code", "schedule", "tir passes", "llvm codegen", "llvm object", SIDE, "wait for side threads", "link",
         "load", "other", "TOTAL compile"]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _timed(owner, name, stage, totals, thread_too=False):
    """Replace owner.name with a wrapper adding its wall and CPU seconds (of the calling
    thread) to totals[stage]; calls from other threads than the main one are not counted
    unless thread_too."""
    fn = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread() and not thread_too:
            return fn(*args, **kwargs)  # counted in its thread's own stage
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[stage][0] += time.perf_counter() - wall
            totals[stage][1] += time.thread_time() - cpu

    setattr(owner, name, wrapper)


def worker(profile, baseline=False):
    """One cold compile in this process: prints {stage: [wall, cpu]} as its last line.
    baseline: as before this bench's changes (TVM's kernel argument asserts, one thread,
    LLVM -O3)."""
    totals = collections.defaultdict(lambda: [0.0, 0.0])
    t, c = time.perf_counter(), time.process_time()
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import tvmfront as tvf
    totals["import"] = [time.perf_counter() - t, time.process_time() - c]
    import lenet_digits
    from tvmfront import build, graph, pipeline
    from tvmfront._tvm import tvm
    import tvm.support.cc
    import tvm.tirx.build
    import tvm_ffi

    _timed(graph, "build_training", "trace", totals)
    run = pipeline.run

    def timed_run(mod, stages, dump_dir=None):  # each named stage timed on its own
        named = []
        for name, fn in stages:
            holder = type("Stage", (), {"fn": staticmethod(fn)})
            _timed(holder, "fn", name, totals)
            named.append((name, holder.fn))
        return run(mod, named, dump_dir)

    pipeline.run = timed_run
    from tvmfront import schedule as cpu_schedule
    # default schedules, wherever build calls them (module-wide, or a chunk at a time while
    # the side threads compile the chunks before: build._compile_streamed)
    _timed(cpu_schedule, "default_cpu_schedule", "schedule", totals)
    _timed(build, "compile_scheduled", "tir passes", totals)  # minus llvm codegen, below
    _timed(sys.modules["tvm.tirx.build"], "codegen_build", "llvm codegen", totals)
    _timed(tvm_ffi.Module, "write_to_file", "llvm object", totals)
    _timed(sys.modules["tvm.support.cc"], "create_shared", "link", totals)
    _timed(build, "_load", "load", totals)
    from tvmfront import split_build
    _timed(split_build.SideBuild, "_run", SIDE, totals, thread_too=True)
    _timed(split_build.SideBuild, "join", "wait for side threads", totals)
    if baseline:
        build.KERNEL_ASSERTS, build.SPLIT_BUILD, build.LLVM_OPT_LEVEL = True, False, 3

    tvf.manual_seed(0)
    model = lenet_digits.make_model()
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    t, c = time.perf_counter(), time.process_time()
    module = tvf.compile_training(model, tvf.nn.CrossEntropyLoss(), lenet_digits.make_optimizer(),
                                  inputs=(64, 1, 16, 16), labels=(64,), records=False)
    total = [time.perf_counter() - t, time.process_time() - c]
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    assert module.build_info["cache"] == "miss", module.build_info["cache"]
    for part in ("llvm codegen",):  # nested inside tir passes: take it out
        totals["tir passes"] = [a - b for a, b in zip(totals["tir passes"], totals[part])]
    side = totals.get(SIDE, [0.0, 0.0])  # overlaps the main thread's stages in wall time
    main = [sum(v[i] for k, v in totals.items() if k not in ("import", SIDE)) for i in (0, 1)]
    totals["other"] = [total[0] - main[0], total[1] - main[1] - side[1]]
    totals["TOTAL compile"] = total
    print(json.dumps(dict(totals)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", help="write one repeat's cProfile stats to this file")
    p.add_argument("--compare", action="store_true",
                   help="also time the baseline (kernel asserts, one thread), alternating")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.profile, args.baseline)
    variants = [("now", [])] + ([("baseline", ["--baseline"])] if args.compare else [])
    runs = {name: [] for name, _ in variants}
    for i in range(args.repeats):  # interleaved, so changes in load hit every variant alike
        for name, flags in variants:
            if args.profile and i == 0 and not flags:
                flags = flags + ["--profile", args.profile]
            runs[name].append(_one(flags, i))
    for name, _ in variants:
        _table(f"{name}: " if args.compare else "", runs[name])


def _one(flags, i):
    """One cold compile in a fresh process and cache folder: its {stage: [wall, cpu]}."""
    with tempfile.TemporaryDirectory(prefix="tvmfront-compile-time-") as cache:
        env = dict(os.environ, TVMFRONT_CACHE_DIR=cache,
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = subprocess.run([sys.executable, __file__, "--worker", *flags], env=env,
                             capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"worker failed:\n{out.stderr[-3000:]}")
    run = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"repeat {i + 1} {' '.join(flags)}: {run['TOTAL compile'][0]:.2f} s wall "
          f"{run['TOTAL compile'][1]:.2f} s cpu", flush=True)
    return run


def _table(title, runs):
    print(f"\n{title}cold compile of LeNet's train step (b64, Adam, default schedules), "
          f"median of {len(runs)}:")
    print(f"{'stage':<26}{'wall s':>9}{'cpu s':>9}")
    for stage in ORDER + sorted(set(runs[0]) - set(ORDER)):
        wall = statistics.median(r.get(stage, [0, 0])[0] for r in runs)
        cpu = statistics.median(r.get(stage, [0, 0])[1] for r in runs)
        print(f"{stage:<26}{wall:>9.3f}{cpu:>9.3f}")


if __name__ == "__main__":
    main()
