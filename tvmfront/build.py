"""IRModule + target (+ tuning records) -> compiled executable.

Scheduling is its own stage: tuning records (a MetaSchedule database directory) are applied
first, then default schedules for whatever they do not cover. Builds go through the compile
cache (tvmfront.cache): the library is exported once, into the cache, and loaded from there.
"""

import collections
import os
import re
import shutil
import tempfile

from . import cache, config, pipeline, tir_walk
from .tuning import policy as records_mod
from .tuning import symbolic
from ._tvm import (cpu_vector_bits, cross_compiler_name, device_available, export_library,
                   host_arch, load_module, normalize_prim_func, prim_func_type, relax,
                   s_tir, structural_hash, target_arch, tirx, tvm)
from .target import resolve_target, target_key

log = config.logger("build")


def schedule_stage(target, records=None, fallbacks=None):
    """The stage that gives TIR kernels their schedules for `target`. `fallbacks`, when a
    dict, receives {kernel: [rule: cause, ...]} for kernels whose default schedule rule
    failed (see tvmfront.schedule)."""

    def schedule(mod):
        with target:
            if records is not None:
                mod = relax.transform.MetaScheduleApplyDatabase(str(records))(mod)
            if target.kind.name == "cuda":
                from tvm.s_tir import dlight as dl  # GPU kernels cannot run unscheduled

                rules = (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                         dl.gpu.GeneralReduction(), dl.gpu.Fallback())
                names = {func: gv.name_hint for gv, func in mod.functions_items()}
                mod = dl.ApplyDefaultSchedule(*_guarded(dl, rules, names, fallbacks))(mod)
            elif target.kind.name == "llvm":
                # Every kernel the records did not cover gets a default CPU schedule
                # (dlight's CPU rules where they fit, tvmfront's own rules elsewhere).
                from . import schedule as cpu_schedule

                mod = cpu_schedule.default_cpu_schedule(mod, target, fallbacks=fallbacks)
        return mod

    return schedule


def _guarded(dl, rules, names, fallbacks):
    """dlight `rules` where one that raises on a kernel passes it to the next (as the CPU
    rules do, tvmfront.schedule), noting why in `fallbacks` under the kernel's name (`names`:
    {PrimFunc: name}): gpu.Reduction's rfactor failed inside TVM on a float16 MSELoss's
    kernel (float32 compute between casts), and the whole CUDA build with it."""

    class Guarded(dl.ScheduleRule):
        def __init__(self, rule, last):
            self.rule, self.last = rule, last

        def apply(self, func, target, tunable):
            try:
                space = self.rule.apply(func, target, tunable)
                if not self.last:  # the last rule's schedule is taken as it is
                    for sch in [] if space is None else space if isinstance(space, list) \
                            else [space]:
                        _check_gpu_lowering(sch.mod)
                return space
            except Exception as err:  # noqa: BLE001  (TVM raises its own error types)
                name = names.get(func, "?")
                lines = str(err).strip().splitlines()
                cause = f"{type(self.rule).__name__}: {lines[-1][:200] if lines else err!r}"
                cause = re.sub(r" \(0x[0-9a-f]+ vs\. 0x[0-9a-f]+\)", "", cause)  # addresses
                log.info("kernel %s: dlight %s", name, cause)
                if isinstance(fallbacks, dict):
                    fallbacks.setdefault(name, []).append(cause)
                return None

    return [Guarded(rule, k == len(rules) - 1) for k, rule in enumerate(rules)]


def _check_gpu_lowering(mod):
    """Raise where TVM would fail to lower a scheduled GPU kernel after the rule returned it
    (where _guarded could no longer pass the kernel on):
    - a cross-thread reduction over a combiner TVM does not know ("No matched reducer":
      tvmfront's NaN-propagating max, in float16 max_pool2d and in ops.max's gradient, which
      gpu.GeneralReduction took);
    - a shared or local buffer of a symbolic size once compacted, which CUDA codegen refuses
      ("Can only handle constant size stack allocation"): gpu.GeneralReduction on a float16
      LayerNorm's weight gradient over [batch, F] kept every row's mean and variance in
      shared memory of `batch` floats, and the whole build failed.
    The s_tir lowering passes up to the buffer compaction (s_tir.pipeline's order) take a
    few milliseconds a kernel."""
    passes = s_tir.transform
    lowered = tvm.ir.transform.Sequential([
        passes.CanonicalizeLoop(), passes.LowerCrossThreadReduction(), passes.LowerInitBlock(),
        passes.PlanAndUpdateBufferAllocationLocation(), passes.ConvertBlocksToOpaque(),
        passes.LiftThreadBinding(), passes.ManifestSharedMemoryLocalStage(),
        passes.CompactBufferAllocation()])(mod)
    for func in lowered.functions.values():
        for stmt in tir_walk.statements(func.body):
            for buf in getattr(stmt, "alloc_buffers", None) or ():
                if buf.scope() != "global" and \
                        not all(isinstance(d, tirx.IntImm) for d in buf.shape):
                    raise ValueError(f"{buf.scope()} buffer {buf.name} of symbolic size "
                                     f"{[str(d) for d in buf.shape]}")


def build(mod, target, records=None, dump_dir=None):
    """Lower `mod` through the pipeline, then schedule and compile it (see build_lowered)."""
    target = resolve_target(target)
    dump_dir = dump_dir or config.dump_ir_dir()
    lowered = pipeline.run(mod, pipeline.LOWERING, dump_dir)
    return build_lowered(lowered, target, records, dump_dir)


# What a build returns. library: the loaded runtime library (None when this machine cannot run
# it); library_bytes: the exported library (None when it cannot be exported here: then the VM
# runs the executable); executable: the in-memory executable (None on a cache hit); lowered:
# the IRModule before scheduling (what tuning extracts its tasks from); info: {"cache": "hit"
# | "miss" | "off", "records": [folders applied], "tuned_kernels": kernels scheduled from
# records (symbolic kernels: those whose record replayed), "key": the compile-cache key,
# "fallback_kernels": {kernel: [rule: cause]} for kernels whose default schedule rule failed
# (they got a simpler one), "record_fallbacks": {kernel: cause} for symbolic kernels whose
# record did not replay (they got the default schedule), and "export_error":
# the compiler's message when the library could not be exported (the VM then runs the
# in-memory executable and the cache is off)}.
Built = collections.namedtuple("Built", "library library_bytes executable target lowered info")


def build_lowered(lowered, target, records=None, dump_dir=None):
    """Schedule a lowered IRModule (tuning records for this target first, default schedules
    for the rest) and compile it, through the compile cache (tvmfront.cache).

    records: None (TVMFRONT_RECORDS or the default records root), False (none), a records
    root with one folder per target key, or one database folder (tvmfront.records.select).
    A cache hit loads the library built before and skips scheduling and compiling. dump_dir
    (which asks for the schedule stage's IR) always builds, and so do targets this machine
    cannot run (cross-compiled ARM, CUDA without a GPU): their modules keep the in-memory
    executable, which tests inspect for its device code.
    """
    target = resolve_target(target)
    selection = records_mod.select(records, target)
    key = cache.key(lowered, target, selection.digest)
    if not dump_dir and runnable_here(target):
        hit = cache.lookup(key)
        if hit is not None:
            data, info, path = hit
            library = _load(path, target)
            if library is not False:
                if info.get("fallback_kernels"):  # logged when built: say it again
                    log.warning("cached build %s: default schedule rules failed on %d "
                                "kernel(s) when it was built: %s", key,
                                len(info["fallback_kernels"]),
                                ", ".join(sorted(info["fallback_kernels"])))
                return Built(library, data, None, target, lowered,
                             dict(info, cache="hit", records=selection.sources))
            cache.discard(key)
            log.warning("compile cache entry %s (%s) did not load: removed, building anew",
                        key, path)
    fallbacks, applied = {}, {}
    exported = None if dump_dir else _compile_streamed(lowered, target, selection, key,
                                                       fallbacks, applied)
    if exported is not None:
        library, data, info = exported
        state = "miss" if cache.cache_dir() is not None else "off"
        return Built(library, data, None, target, lowered, dict(info, cache=state))
    fallbacks, applied = {}, {}  # the streamed attempt may have filled them before it gave up
    scheduled, selection = schedule_lowered(lowered, target, selection, fallbacks, applied)
    if not selection:
        key = cache.key(lowered, target, "")  # records TVM could not load were dropped
    if dump_dir:
        pipeline._dump(dump_dir, len(pipeline.LOWERING) + 1, "schedule", scheduled)
    info = _build_info(lowered, target, selection, key, fallbacks, applied)
    exported = _compile_split(scheduled, target, key, info)
    if exported is not None:  # the in-memory executable lacks the side kernels: not kept
        state = "miss" if cache.cache_dir() is not None else "off"
        return Built(*exported, None, target, lowered, dict(info, cache=state))
    executable = compile_scheduled(scheduled, target)
    library, data = _export(key, executable, target, info)
    if data is None:  # not exportable here: the VM runs the executable
        return Built(executable, None, executable, target, lowered, dict(info, cache="off"))
    state = "miss" if cache.cache_dir() is not None and runnable_here(target) else "off"
    return Built(library, data, executable, target, lowered, dict(info, cache=state))


def _build_info(lowered, target, selection, key, fallbacks, applied):
    """The build's info (see Built) before its cache state is known."""
    return {"records": selection.sources,
            "tuned_kernels": _covered(lowered, selection) + applied["symbolic_tuned"],
            "key": key, "target_key": target_key(target),
            "records_key": records_mod.store_key(target), "fallback_kernels": fallbacks,
            "record_fallbacks": applied["record_fallbacks"]}


def schedule_lowered(lowered, target, selection, fallbacks=None, report=None):
    """(scheduled IRModule, the Selection applied): the records of `selection` (a
    tvmfront.records.Selection) where they exist, default schedules elsewhere. Records that
    TVM cannot load are dropped with a warning (the returned Selection is then empty).
    `fallbacks`: as for schedule_stage. Symbolic kernels (any batch size) are scheduled from
    their records by replaying them here (tvmfront.tuning.symbolic); `report`, when a dict,
    receives "symbolic_tuned" (how many were) and "record_fallbacks" ({kernel: cause} for
    records that did not replay: those kernels got default schedules)."""
    kernels = symbolic.symbolic_kernels(lowered)
    rest, traces = selection.split({h for _, h in kernels.values()})
    failures = {}
    lowered, replayed = symbolic.apply(lowered, traces, failures)
    if report is not None:
        report.update(symbolic_tuned=replayed, record_fallbacks=failures)
    with rest.database() as (folder, database):
        if folder is None and rest:
            selection = records_mod.Selection()
        stage = schedule_stage(target, folder, fallbacks)
        if database is None:
            return stage(lowered), selection
        with database:  # MetaScheduleApplyDatabase queries the current database
            return stage(lowered), selection


# Kernels of a compiled module are called only by its Relax VM code, which checks the
# arguments of the module's functions (shapes, dtypes, devices) on entry and allocates every
# kernel's outputs from them: the per-kernel argument checks TVM's MakePackedAPI adds (asserts)
# re-check what cannot differ. Without them the LLVM code of a kernel is about half as long,
# and a cold compile spends ~4 s less CPU on LeNet's train step (bench/compile_time.py).
KERNEL_ASSERTS = False


# A tile split by a factor that does not divide its loop (gemm._remainder_tile) is predicated
# on every row; TVM's LoopPartition peels the last, partial tile off constant loops too, so the
# full tiles run without the checks (an AVX2 1024^3 GEMM with 6-row tiles: 5x slower without).
PARTITION_CONST_LOOPS = True


def kernel_pass_context():
    """The PassContext module kernels are compiled under: the current one, without TVM's
    argument asserts in kernels unless KERNEL_ASSERTS."""
    current = tvm.transform.PassContext.current()
    config = dict(current.config)
    if not KERNEL_ASSERTS:
        config["tirx.disable_assert"] = True
    if PARTITION_CONST_LOOPS:
        config.setdefault("s_tir.LoopPartition", {"partition_const_loop": True})
    return tvm.transform.PassContext(opt_level=current.opt_level, config=config,
                                     required_pass=list(current.required_pass),
                                     disabled_pass=list(current.disabled_pass))


# LLVM's optimization level for kernels, unless the target sets "opt-level" itself. The
# schedules already tile, unroll and vectorize; -O3's extra passes (aggressive unrolling, SLP
# vectorization of the unrolled tiles) cost ~25% of LLVM's time on LeNet's train step and
# made its step slower, not faster (bench/compile_time.py; -O1 crashed LeNet's step).
LLVM_OPT_LEVEL = 2


def codegen_target(target):
    """`target` as its kernels are compiled: an LLVM CPU target gets LLVM_OPT_LEVEL unless it
    names its own "opt-level", and an x86 AVX-512 one full-width vectors (PREFER_256_BIT_OFF)
    unless its -mattr decides prefer-256-bit itself. Only code generation sees it: cache keys,
    records and manifests keep `target`."""
    if target.kind.name != "llvm":
        return target
    attrs = target.export()
    extra = {}
    if "opt-level" not in attrs:
        extra["opt-level"] = LLVM_OPT_LEVEL
    mattr = list(attrs.get("mattr") or [])
    if (target_arch(target) == "x86_64" and cpu_vector_bits(target) == 512
            and not any("prefer-256-bit" in str(f) for f in mattr)):
        extra["mattr"] = mattr + [PREFER_256_BIT_OFF]
    return tvm.target.Target(dict(attrs, **extra)) if extra else target


# LLVM gives its Intel AVX-512 CPUs (skylake-avx512 to sapphirerapids, this VM's 'rocketlake')
# and the portable x86-64-v4 the tuning flag prefer-256-bit (AMD's znver4 has not got it). With
# it a kernel holding an if_then_else (relu_grad, causal masks) or an isnan select (fastmath's
# exp, erf, tanh) was compiled to 256-bit ymm code only (0 zmm instructions), half the width
# the schedules size their vectors for (cpu_vector_bits) and the FMA peak counts.
PREFER_256_BIT_OFF = "-prefer-256-bit"


def compile_scheduled(mod, target):
    """tvm.compile to the Relax VM. Our stages already legalized, fused and scheduled; TVM's
    build pipeline only lowers to the VM. (The step a compile-cache hit skips.)"""
    with kernel_pass_context():
        return tvm.compile(mod, target=codegen_target(target), relax_pipeline=vm_pipeline(),
                           tir_pipeline=kernel_tir_pipeline())


def compile_kernels(mod, target):
    """TIR kernels (an IRModule of scheduled PrimFuncs, or one) compiled as module builds
    compile them: under kernel_pass_context, for codegen_target, through kernel_tir_pipeline.
    A kernel timed or checked alone is then the code a module runs (built otherwise, a
    partial tile kept its checks, and AVX-512 code LLVM's prefer-256-bit)."""
    with kernel_pass_context():
        return tvm.compile(mod, target=codegen_target(target),
                           tir_pipeline=kernel_tir_pipeline())


# The name under which kernel_tir_pipeline registers the TIR pipeline with TVM.
KERNEL_PIPELINE = "tvmfront"


def kernel_tir_pipeline():
    """The name of the TIR pipeline every kernel build uses (tvm.compile's tir_pipeline,
    tvm.tirx.build's pipeline), registered with TVM: index_division's PositiveDivisions (a
    TVM index bug), tvmfront.denormals' FlushDenormals (where config.flush_denormals()), then
    TVM's default."""
    from . import denormals, index_division

    def factory():
        lower, host, device = tirx.get_tir_pipeline("default")
        first = [index_division.module_pass()]
        if config.flush_denormals():
            first.append(denormals.module_pass())
        return tvm.transform.Sequential([*first, lower]), host, device

    tirx.register_tir_pipeline(KERNEL_PIPELINE, factory)
    return KERNEL_PIPELINE


def vm_pipeline():
    """TVM's Relax build pipeline, then every PrimFunc of one buffer that lacks it marked
    `tirx.noalias` (true of a single buffer). Those are the VM's shape functions (a symbolic
    batch's `40 * n`, written to the shape heap), built in one LLVM module with the kernels
    that stay in the main build: with one function of the module not noalias, TVM builds
    every kernel without its separate `noalias` compute function, and LLVM then keeps a
    GEMM's accumulators in memory (a symbolic MLP's GEMMs ran 1.5-2.5x slower, 16 FMAs in
    the loop instead of 48; a symbolic step built in one piece 2.5x slower)."""
    return tvm.transform.Sequential([relax.pipeline.default_build_pipeline(),
                                     tvm.transform.module_pass(_noalias_single_buffer_funcs,
                                                               opt_level=0,
                                                               name="NoaliasShapeFuncs")])


def _noalias_single_buffer_funcs(mod, _ctx):
    marked = {}
    for gvar, func in mod.functions.items():
        if (isinstance(func, prim_func_type()) and "tirx.noalias" not in (func.attrs or {})
                and sum(1 for p in func.params if hasattr(p, "shape")) <= 1):
            marked[gvar] = func.with_attr("tirx.noalias", True)
    for gvar, func in marked.items():
        mod[gvar] = func
    return mod


# Whether CPU builds this machine runs compile their kernels in a thread per core
# (tvmfront.split_build): LLVM's code generation is most of a cold compile, on one core.
SPLIT_BUILD = True


def _compile_split(scheduled, target, key, info):
    """Compile `scheduled` with its kernels built in a thread per core and export it:
    (library, bytes), or None when that does not apply (not a CPU target this machine runs,
    SPLIT_BUILD off, nothing to split) or failed (logged; the caller builds it whole)."""
    if not (SPLIT_BUILD and target.kind.name == "llvm" and runnable_here(target)):
        return None
    from . import split_build

    main, side = split_build.split(scheduled)
    if not side:
        return None
    return _build_threaded(main, side, target, key, info)


def _build_threaded(main, side, target, key, info, schedule=None):
    """Build the side modules in a thread per core (split_build.SideBuild) and `main` here,
    then export and load the library: (library, bytes); None when that failed (logged).
    schedule: applied to each side module before the threads get it, and to `main`, when
    they come unscheduled (_compile_streamed)."""
    from . import split_build

    schedule = schedule or (lambda mod: mod)
    with tempfile.TemporaryDirectory(prefix="tvmfront-side-") as tmp:
        job = split_build.SideBuild([], codegen_target(target), tmp, kernel_pass_context(),
                                    threads=os.cpu_count() or 1,
                                    pipeline=kernel_tir_pipeline())
        job.start()
        try:
            for chunk in side:
                job.add(schedule(chunk))
            job.close()
            executable = compile_scheduled(schedule(main), target)
            # The side objects join at the link, so the main thread writes its own object
            # meanwhile.
            library, data = _export(key, executable, target, info, link=job.link)
        except Exception as err:  # noqa: BLE001 - built in one piece instead
            log.warning("building the kernels in threads failed (%s): building the module "
                        "in one piece", _message(err))
            return None
        finally:
            job.join()
    if data is None:  # the library did not load (logged by _export)
        log.warning("the library built in threads did not load: building the module in "
                    "one piece")
        info.pop("export_error", None)
        return None
    return library, data


def _compile_streamed(lowered, target, selection, key, fallbacks, applied):
    """Schedule and compile `lowered` at once: the side kernels (tvmfront.split_build) are
    given their default schedules here one chunk at a time, each chunk handed to the
    threads that generate code while the next is scheduled (scheduling is Python, code
    generation mostly LLVM without the GIL: on 2 cores they overlap). Returns (library,
    bytes, info), or None where it does not apply: a target this machine does not run on
    the CPU, SPLIT_BUILD off, records that MetaSchedule's database applies (the module-wide
    path schedules those), nothing to split; or when it failed (logged: the caller then
    schedules and builds the module the usual way)."""
    if not (SPLIT_BUILD and target.kind.name == "llvm" and runnable_here(target)):
        return None
    kernels = symbolic.symbolic_kernels(lowered)
    rest, traces = selection.split({h for _, h in kernels.values()})
    if rest:
        return None
    from . import schedule as cpu_schedule
    from . import split_build

    failures = {}
    replayed_mod, replayed = symbolic.apply(lowered, traces, failures)
    applied.update(symbolic_tuned=replayed, record_fallbacks=failures)
    main, side = split_build.split(replayed_mod)
    if not side:
        return None
    info = _build_info(lowered, target, selection, key, fallbacks, applied)

    def schedule(mod):
        with target:
            return cpu_schedule.default_cpu_schedule(mod, target, fallbacks=fallbacks)

    built = _build_threaded(main, side, target, key, info, schedule)
    if built is None:
        fallbacks.clear()  # the module-wide path schedules (and reports) again
        return None
    return (*built, info)


def runnable_here(target):
    """Whether this machine can run code built for `target` (CPU architecture, device)."""
    return target_arch(target) == host_arch() and device_available(target.kind.name)


def _load(path, target):
    """The library at `path` loaded, None if it cannot run here, False (logged with the
    cause) if it fails to load."""
    if not runnable_here(target):
        return None
    try:
        return load_module(path)
    except Exception as err:  # noqa: BLE001 - the caller rebuilds or keeps the executable
        log.warning("library %s did not load: %s", path, _message(err))
        return False


def _export(key, executable, target, info, link=None):
    """Export the executable into the cache and load it back: (library, bytes); a target this
    machine cannot run is exported to a temporary file (library None); (None, None) when it
    cannot be exported here. link: the function linking the library (export_library's
    fcompile), whose errors are raised rather than answered with (None, None)."""
    arch = target_arch(target)
    cxx = None
    if arch != host_arch():
        cxx = cross_compiler_name(arch)
        if cxx is None or shutil.which(cxx) is None:  # export() will say what to install
            log.info("no cross compiler for %s (%s): the module keeps its in-memory "
                     "executable", arch, cxx or "none known")
            return None, None
    runnable = runnable_here(target)
    try:
        path, data = cache.store(key if runnable else None,
                                 lambda p: _export_library(executable, p, cxx, link), info)
    except Exception as err:  # noqa: BLE001 - a toolchain problem: keep the executable
        if link is not None:
            raise
        info["export_error"] = f"{type(err).__name__}: {_message(err, 2000)}"
        log.warning("exporting the compiled library failed; this build runs in memory and "
                    "is not cached: %s", info["export_error"])
        return None, None
    try:
        library = _load(path, target) if runnable else None
    finally:
        if cache.cache_dir() is None or not runnable:
            os.unlink(path)
    if library is False:  # logged by _load
        info["export_error"] = f"the exported library {path} did not load"
        if cache.cache_dir() is not None and runnable:
            cache.discard(key)
        return None, None
    return library, data


def _export_library(executable, path, cxx, link):
    """export_library, linked by `link` (an fcompile) when given."""
    if link is not None:
        return executable.export_library(path, fcompile=link)
    return export_library(executable, path, cxx)


def _message(err, limit=600):
    """An exception's text, cut to its last `limit` characters (a compiler's error is last)."""
    text = str(err).strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _covered(lowered, selection):
    """How many static kernels of `lowered` the selected records schedule (symbolic ones are
    counted as their records replay: schedule_lowered)."""
    if not selection:
        return 0
    hashes = selection.hashes()
    return sum(1 for func in lowered.functions.values()
               if isinstance(func, prim_func_type()) and not symbolic.names(func)
               and str(structural_hash(normalize_prim_func(func))) in hashes)
