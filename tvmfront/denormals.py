"""Denormal floats flushed to zero in compiled CPU kernels, as XLA's CPU kernels do.

On x86 an arithmetic instruction whose input or result is denormal (below 1.18e-38 in
float32) takes a microcode assist of ~100 cycles. Training makes such values: SGD's momentum
of a weight whose gradient stays zero (a dead ReLU unit) decays by 0.9 a step and is denormal
after ~800 steps. The MLP of bench/ at batch 1 (SGD, momentum 0.9) went from 65 to 160-180 us
a step once 7195 of its parameters and momenta were denormal (2 AVX-512 threads).

The floating-point mode is per thread (x86: the FTZ and DAZ bits of MXCSR; AArch64: FZ of
FPCR), so every kernel sets it itself: at entry it saves the calling thread's mode and sets
flushing, at exit it restores the saved mode, so that the caller's own code (numpy, the
Python thread) keeps IEEE denormals. Each parallel loop's body sets flushing too, on the
thread pool's threads, which run only TVM's tasks and keep it (threads inherit the mode of
the thread that starts them: a pool started inside a flushing kernel already flushes, one
started before gets it from its first task). A parallel loop under a statement the rebuild
does not enter (tir_walk.rebuild) keeps the pool threads' mode, and a kernel that fails
an assert (build.KERNEL_ASSERTS) returns early and leaves the calling thread flushing.
Normal steps take the same time (MLP, Transformer and ResNet train steps 0.996-1.004x, 2
threads, 8 interleaved rounds). The check in a parallel loop's body runs once per iteration
(a read of MXCSR, ~5.7 ns on an AVX-512 EPYC): the schedules run a loop of many small
iterations in tasks (schedule/loops._in_tasks; an elementwise kernel had paid it per vector:
relu over b32 64@28 818 against 165 us).

Off with TVMFRONT_FLUSH_DENORMALS=0 (config.flush_denormals; part of the compile-cache key).
Such a module's kernels leave the mode as they find it: in a process that also ran flushing
kernels, its parallel tasks flush on pool threads that ran theirs. Other targets (CUDA,
whose kernels TVM builds without such a prologue), and op.eager's unscheduled kernels (what
opcheck and gradcheck run), keep IEEE arithmetic.
"""

from ._tvm import s_tir, target_arch, tirx, tvm
from .tir_walk import rebuild, with_block

# x86 MXCSR: FTZ (bit 15) flushes denormal results to zero, DAZ (bit 6) reads denormal inputs
# as zero. AArch64 FPCR: FZ (bit 24) does both.
MXCSR_FLUSH = 0x8040
FPCR_FLUSH = 1 << 24

ARCHES = ("x86_64", "aarch64")

def _arch(func):
    """The architecture in ARCHES whose CPU runs `func` (by its target attribute), else None."""
    target = func.attrs.get("target") if func.attrs is not None else None
    if target is None or target.kind.name != "llvm":
        return None
    arch = target_arch(target)
    return arch if arch in ARCHES else None


def flush_denormals(func, arch):
    """`func` (scheduled TIR: a root block over loops) setting flushing at entry and in each
    parallel loop's body, and restoring the caller's mode at exit (see the module doc)."""
    root = func.body
    if type(root).__name__ != "SBlockRealize":
        return func
    saved = tirx.decl_buffer((1,), "int64" if arch == "aarch64" else "int32", "fp_mode_saved")
    flushing = tirx.decl_buffer((1,), saved.dtype, "fp_mode_flushing")
    enter, leave, in_task = _mode_stmts(arch, saved, flushing)
    block = root.block
    body = tirx.SeqStmt([*enter, _in_parallel_loops(block.body, in_task), leave])
    block = with_block(block, body=body, alloc_buffers=[*block.alloc_buffers, saved, flushing])
    return func.with_body(s_tir.SBlockRealize(root.iter_values, root.predicate, block))


def _mode_stmts(arch, saved, flushing):
    """(statements at entry, the statement at exit, a maker of the statement opening a
    parallel loop's body). In a parallel body the mode is read and set only where it is not flushing yet:
    setting it stalls the pipeline (~6 ns a time here), and a fine-grained parallel loop
    (the MLP's batch-1 GEMV: 64 tasks of 30 ns) paid that on every iteration, 3% of its
    forward; read, the check costs ~1 ns, and the mode is set once per pool thread."""
    def load(buf):
        return tirx.BufferLoad(buf, [0])

    def call(name, *args):
        return tirx.Evaluate(tirx.call_llvm_intrin("void", name, *args))

    if arch == "aarch64":
        dtype, flag = "int64", FPCR_FLUSH

        def read(buf):
            return tirx.BufferStore(buf, tirx.call_llvm_intrin(dtype, "llvm.aarch64.get.fpcr"),
                                    [0])

        def write(buf):
            return call("llvm.aarch64.set.fpcr", load(buf))
    else:
        dtype, flag = "int32", MXCSR_FLUSH

        def read(buf):
            return call("llvm.x86.sse.stmxcsr", tirx.address_of(load(buf)))

        def write(buf):
            return call("llvm.x86.sse.ldmxcsr", tirx.address_of(load(buf)))

    flags = tirx.const(flag, dtype)
    enter = [read(saved),
             tirx.BufferStore(flushing, tirx.bitwise_or(load(saved), flags), [0]),
             write(flushing)]

    def in_task():  # a buffer of its own per loop (TVM refuses one defined twice)
        mode = tirx.decl_buffer((1,), dtype, "fp_mode")
        body = tirx.SeqStmt([
            read(mode),
            tirx.IfThenElse(tirx.NE(tirx.bitwise_and(load(mode), flags), flags), tirx.SeqStmt([
                tirx.BufferStore(mode, tirx.bitwise_or(load(mode), flags), [0]),
                write(mode)]), None)])
        # an opaque block of its own: the buffer lives in the task, on its thread's stack
        block = s_tir.SBlock([], [], [], "fp_mode", body, None, [mode], [], {})
        return s_tir.SBlockRealize([], tirx.const(True, "bool"), block)

    return enter, write(saved), in_task


def _in_parallel_loops(node, stmt):
    """`node` with stmt() first in the body of every parallel loop (the outermost: TVM runs
    no parallel loop inside another), through what tir_walk.rebuild enters."""
    def opened(loop):
        if type(loop).__name__ != "For" or loop.kind != tirx.ForKind.PARALLEL:
            return None
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind,
                        tirx.SeqStmt([stmt(), loop.body]), loop.thread_binding,
                        loop.annotations, getattr(loop, "step", None))

    return rebuild(node, opened) or node


def module_pass():
    """FlushDenormals: every PrimFunc of a CPU target in ARCHES with the prologue."""
    def run(mod, _ctx):
        funcs = {gv: f for gv, f in mod.functions.items()}
        changed = False
        for gv, f in funcs.items():
            arch = _arch(f) if isinstance(f, tirx.PrimFunc) else None
            if arch is not None:
                funcs[gv] = flush_denormals(f, arch)
                changed = True
        return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos) \
            if changed else mod

    return tvm.transform.module_pass(run, opt_level=0, name="FlushDenormals")
