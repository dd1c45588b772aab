"""The ``tvmfront`` command.

    tvmfront tune FILE [--target x86] [--budget N] [--seconds S] [--records DIR] [--only NAME]
                       [--rpc HOST:PORT | --rpc TRACKER:PORT/KEY]
    tvmfront records check [FILE ...] [--records DIR] [--prune] [--rounds N] [--only NAME]
    tvmfront launch -n N [--hosts FILE] SCRIPT [ARGS...]   (mpiexec; see tvf.distributed)

FILE is a Python file (an example, or your model file) defining ``tvmfront_modules()``, which
returns {name: compiled module} (tvf.compile_training / tvf.compile_inference results); when
it takes a ``target`` argument it receives --target. The file is imported, not run as a
script, so code under ``if __name__ == "__main__":`` does not run. Each module is tuned with
``--budget`` trials (and/or ``--seconds``) into the records store (``--records`` root,
default the user store: TVMFRONT_RECORDS or ``~/.cache/tvmfront/schedules``), then the
command prints a per-kernel table (default vs tuned latency, each kernel timed alone;
MetaSchedule's own measurement of the best record) and the end-to-end speedup: the median
time of a train step / forward call, default schedules vs tuned, measured in this run,
interleaved.

``--rpc`` measures on other machines over TVM RPC (tvmfront.rpc): ``HOST:PORT`` is one
``python -m tvm.exec.rpc_server`` (e.g. on an ARM board: ``--target arm --rpc board:9090``),
``TRACKER:PORT/KEY`` every server registered with that tracker under KEY, candidates fanned out
over all of them. Kernels are then timed on the device; the end-to-end time is not measured
(it would time this machine): run the exported bundle on the device for that.

``python -m tvmfront.cli tune ...`` is the same command without the installed script.
"""

import argparse
import importlib.machinery
import importlib.util
import inspect
import math
import os
import sys

from .distributed import launch
from .errors import TvmfrontError
from .target import target_key


def _load_modules(path, target, explicit_target):
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise TvmfrontError(f"{path}: no such file")
    if not os.path.isfile(path):  # a directory failed inside importlib ('loader')
        raise TvmfrontError(f"{path}: not a file (give the Python file that defines "
                            "tvmfront_modules())")
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the file's own imports (e.g. the examples' _common)
    name = "_tvmfront_user_" + os.path.splitext(os.path.basename(path))[0]
    # a source loader whatever the suffix, as `python FILE` runs it (spec_from_file_location
    # knows the file only by a .py suffix: None, and a raw AttributeError, without one)
    spec = importlib.util.spec_from_loader(name, importlib.machinery.SourceFileLoader(name, path))
    user = importlib.util.module_from_spec(spec)
    sys.modules[name] = user
    spec.loader.exec_module(user)
    fn = getattr(user, "tvmfront_modules", None)
    if not callable(fn):
        raise TvmfrontError(f"{path} defines no tvmfront_modules() returning "
                            "{name: compiled module}")
    takes_target = "target" in inspect.signature(fn).parameters
    modules = fn(target=target) if takes_target else fn()
    if not isinstance(modules, dict) or not modules:
        raise TvmfrontError(f"{path}: tvmfront_modules() must return a non-empty dict "
                            f"{{name: compiled module}}, got {type(modules).__name__}")
    want = target_key(target)
    for key, module in modules.items():
        if getattr(module, "_lowered", None) is None:
            raise TvmfrontError(f"{path}: tvmfront_modules()[{key!r}] is not a module from "
                                "tvf.compile_training / tvf.compile_inference")
        have = target_key(module._target)
        if explicit_target and have != want:
            raise TvmfrontError(f"{path}: module {key!r} is compiled for {have}, not {want}; "
                                "let tvmfront_modules take a target argument")
    return modules


def _ms(seconds):
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _sizes(items):
    """{name: int} from ["batch=64", ...]; None when none given."""
    sizes = {}
    for item in items:
        name, _, value = item.partition("=")
        # batch=0 passed here and failed deep in the tuning as a raw ValueError
        if not name or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--size {item!r}: expected NAME=N, N >= 1, e.g. batch=64")
        sizes[name.strip()] = int(value)
    return sizes or None


def cmd_tune(args):
    from .tuning.run import tune
    from .tuning.verify import end_to_end, rebuilt  # TVM loads here, not at `tvmfront launch`
    modules = _load_modules(args.file, args.target, args.target_given)
    names = list(modules) if not args.only else args.only
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise TvmfrontError(f"no module {unknown} in {args.file}; it has {sorted(modules)}")
    summary = []
    for name in names:
        module = modules[name]
        what = "train step" if module.kind == "training" else "forward"
        print(f"== {name}: {module.kind} module, target {target_key(module._target)}", flush=True)
        default = rebuilt(module, False) if args.rpc is None else None
        report = tune(module, budget=args.budget, seconds=args.seconds, records=args.records,
                      progress=not args.no_progress, rpc=args.rpc, sizes=args.sizes)
        print(f"{report.trials} trials ({report.failed} failed) in {report.elapsed:.0f} s, "
              f"stopped: {report.stopped}; records: {report.store}")
        if report.remote is not None:
            print(f"measured over RPC on {report.remote} ({report.servers} server(s))")
        print(f"log: {report.log}")
        print(report.table(top=args.top))
        if default is None:
            print(f"end to end: not timed (kernels were timed on {report.remote}; run the "
                  f"exported bundle there to time a {what}) "
                  f"({module.build_info.get('tuned_kernels', 0)} kernel(s) from records)\n",
                  flush=True)
            continue
        t_default, t_tuned, _ = end_to_end(default, module, sizes=args.sizes)
        speedup = t_default / t_tuned
        print(f"end to end ({what}, median): default {_ms(t_default)}, tuned {_ms(t_tuned)}, "
              f"speedup {speedup:.2f}x "
              f"({module.build_info.get('tuned_kernels', 0)} kernel(s) from records)\n",
              flush=True)
        summary.append((name, t_default, t_tuned, speedup))
    if len(summary) > 1:
        print("summary (median per call):")
        for name, d, t, s in summary:
            print(f"  {name:<20} default {_ms(d):>12}  tuned {_ms(t):>12}  speedup {s:.2f}x")
    return 0


EXAMPLES = ("lenet_digits.py", "mlp_digits.py", "resnet_digits.py", "char_transformer.py")


def _example_files():
    """The repository's examples whose records ship (a source checkout), else []."""
    from .tuning.policy import ROOT
    paths = [os.path.join(ROOT, "examples", name) for name in EXAMPLES]
    return [p for p in paths if os.path.exists(p)]


def cmd_records_check(args):
    """Rebuild each module of each file with and without the records of this machine's store
    key under --records, time both interleaved; with --prune, drop the records that no longer
    beat the default schedules (tvmfront.tuning.verify)."""
    from .tuning import policy, store, verify

    if args.records and not os.path.exists(args.records):  # a typo checked nothing, exit 0
        raise TvmfrontError(f"records check: --records {args.records} does not exist")
    root = args.records or policy.shipped_root() or policy.user_root()
    files = args.files or _example_files()
    if not files:
        raise TvmfrontError("records check: no FILE given and no examples/ beside the package")
    folder = verify.store_folder(root, args.target)
    if folder is None:
        print(f"no records for {store.store_key(args.target)} under {root}: nothing to check")
        return 0
    print(f"checking {folder} against the default schedules ({args.rounds} interleaved "
          f"round(s) per module{', pruning' if args.prune else ''})", flush=True)
    checks, matched, seen = [], set(), []
    for path in files:
        modules = _load_modules(path, args.target, args.target_given)
        stem = os.path.splitext(os.path.basename(path))[0]
        for name in modules:
            label = f"{stem}:{name}"  # --only takes a module's name or this printed label
            seen.append(label)
            wanted = [o for o in (args.only or [name]) if o in (name, label)]
            if not wanted:
                continue
            matched.update(wanted)
            checks.append(verify.check_module(
                label, modules[name], folder, rounds=args.rounds, min_speedup=args.min_speedup,
                log=lambda line: print(line, flush=True)))
    missing = sorted(set(args.only or []) - matched)
    if missing:  # checking nothing and pruning nothing would pass for a clean store
        raise TvmfrontError(f"records check: no module {missing}; there are {seen}")
    dropped = verify.prune(folder, checks) if args.prune else None
    if not args.prune:
        would = verify.to_drop(checks)
        print(f"{len(would)} kernel record(s) would be dropped (--prune drops them)")
    print("\n".join(verify.describe(folder, dropped, checks)))
    return 0


def _add_tune_parser(sub):
    p = sub.add_parser("tune", help="tune the modules a Python file defines",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="Python file defining tvmfront_modules()")
    p.add_argument("--target", default=None, help="target name or JSON dict (default: x86)")
    p.add_argument("--budget", type=int, default=64, help="trials per module (default 64)")
    p.add_argument("--seconds", type=float, default=None, help="wall-time limit per module")
    p.add_argument("--records", default=None,
                   help="records root to write (default: TVMFRONT_RECORDS or "
                        "~/.cache/tvmfront/schedules)")
    p.add_argument("--only", action="append", metavar="NAME", help="tune only this module")
    p.add_argument("--top", type=int, default=20, help="kernels shown in the table")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.add_argument("--rpc", default=None, metavar="HOST:PORT[/KEY]",
                   help="measure over TVM RPC: an rpc_server's HOST:PORT, or a tracker's "
                        "HOST:PORT/KEY (every server under KEY)")
    p.add_argument("--size", action="append", metavar="NAME=N", default=[],
                   help="size a symbolic dimension is tuned and timed at (e.g. batch=64; "
                        "repeatable; default 64 for each)")


def _add_records_parser(sub):
    p = sub.add_parser("records", help="check a records store against the default schedules")
    actions = p.add_subparsers(dest="action", required=True)
    c = actions.add_parser("check", help="time each module with and without the records of "
                                         "this machine's store key; --prune drops losers",
                           description=cmd_records_check.__doc__)
    c.add_argument("files", nargs="*", metavar="FILE",
                   help="Python files defining tvmfront_modules() (default: the four "
                        "examples of the source checkout)")
    c.add_argument("--target", default=None, help="target name or JSON dict (default: x86)")
    c.add_argument("--records", default=None,
                   help="records root to check (default: the shipped schedules/ of a source "
                        "checkout, else the user store)")
    c.add_argument("--prune", action="store_true",
                   help="drop the records that no longer beat the default schedules")
    c.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds of timing per module (default 5)")
    c.add_argument("--min-speedup", type=float, default=1.02,
                   help="a module's records are kept when it is at least this much faster "
                        "end to end (default 1.02: closer is noise on a shared machine)")
    c.add_argument("--only", action="append", metavar="NAME", help="check only this module")


def _target_arg(args):
    """args.target as a target (default x86), args.target_given whether one was named."""
    args.target_given = args.target is not None
    target = args.target or "x86"
    if target.lstrip().startswith("{"):
        import json

        target = json.loads(target)
    args.target = target


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tvmfront", description="tvmfront command line")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_tune_parser(sub)
    _add_records_parser(sub)
    p = sub.add_parser("launch", help="run a script on N MPI processes (data-parallel "
                                      "training: tvf.distributed)",
                       description=launch.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    launch.add_arguments(p)
    args = parser.parse_args(argv)
    if args.command == "launch":
        try:
            return launch.run(args)
        except ValueError as err:  # -n 0, a missing host file: a usage error, not a traceback
            parser.error(str(err))
    if args.command == "tune":
        try:
            args.sizes = _sizes(args.size)
        except ValueError as err:
            parser.error(str(err))
    for flag, value, low in (("--budget", getattr(args, "budget", None), 1),
                             ("--rounds", getattr(args, "rounds", None), 1)):
        if value is not None and value < low:
            parser.error(f"{flag} must be at least {low}, got {value}")
    for flag, value in (("--seconds", getattr(args, "seconds", None)),
                        ("--min-speedup", getattr(args, "min_speedup", None))):
        # --min-speedup nan kept no record (every comparison with NaN is false): --prune
        # deleted them all; --seconds -1 ran a batch of trials and stopped
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"{flag} must be a finite number > 0, got {value}")
    try:
        _target_arg(args)
    except ValueError as err:  # a malformed JSON dict
        parser.error(f"--target: {err}")
    try:
        return cmd_tune(args) if args.command == "tune" else cmd_records_check(args)
    except TvmfrontError as err:
        print(f"tvmfront: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntvmfront: interrupted (the records found so far are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
