"""Default schedules for CPU kernels of untuned builds.

TVM 0.27's CPU build applies no schedule: a kernel lowered from TE runs as its naive loop
nest, scalar, on one core. ``default_cpu_schedule(mod, target)`` (the build's schedule
stage, after any tuning records) gives every unscheduled PrimFunc a schedule for an LLVM CPU
target and records the rule in the kernel's ``tvmfront.schedule_rule`` attribute (visible in
``dump_ir``'s schedule stage).

One file per kernel family, plus the dispatch and what they share (each file's docstring
says more; a file imports only the ones listed before it):

- ``params``: the target as the schedules see it (CpuParams: vector lanes, cores,
  accumulator registers) and every tuning constant;
- ``failures``: NotApplicable (a rule's pattern does not fit) and how failures are logged;
- ``analysis``: read-only facts: block iteration spaces, access strides, loop kinds, work;
- ``loops``: decisions every family shares: vector factors, tile divisors, parallel loops;
- ``predicates``: block predicates marked likely, so that TVM's LoopPartition peels off a
  partial last tile (the GEMM family's AVX2 tiles of 6 rows);
- ``deferred_writeback``: a register tile's write-back moved into the next tile's reduction
  loop, its stores spread over FMA work (conv_forward's NCHW write-back);
- ``phase_writes``: a strided d/dx's phases storing into dx themselves, its interleave pass
  removed (conv_phases marks them);
- ``pad_borders``: a zero padding placed in a loop copied once, its column borders apart
  from its interior (no zero fill of the whole block first);
- ``padded_terms``: a zero padding inlined into a sum, the terms over it skipped by a
  likely block predicate (conv_forward's: no copy, fewer FMAs);
- ``window_blocks``: max-pool gradients whose rows of windows are narrower than a vector,
  vectorized over blocks of whole rows of windows (conv's gather rule calls it);
- ``conv``: strided sliding windows (gather-form gradients of convolution and pooling);
- ``spatial``: elementwise and injective blocks, padding, epilogues;
- ``gemm``: the GEMM family (dense, batch_matmul, transposed forms, convolution forward):
  register tiles over a vectorized output axis, packed operands;
- ``window_reindex``: reductions over a symbolic batch whose window read of a small operand
  keeps them from being padded: the window copied out, then the GEMM family's rule;
- ``conv_forward``: 3x3-style convolution forward (stride 1 or 2), one image per parallel
  iteration;
- ``conv_phases``: a stride-2 convolution's d/dx, its four output phases computed per image
  just before they are interleaved;
- ``conv_weight_grad``: a same-size stride-1 convolution's d/dw, the image loop outside
  the register tiles, dy padded and transposed per image;
- ``gemv``: matrix times vector (a Linear layer at batch 1);
- ``reductions``: reductions with no vectorizable output axis (scalar tiles, plain loops),
  and sums over leading axes split across the cores;
- ``tile_reads``: whether an epilogue computed under a tile reads only what the tile wrote;
- ``int8``: ops.int8's packed GEMM tensorized with the CPU's 8-bit dot product;
- ``dispatch``: the entry points and the order in which rules are tried.

A schedule for a new kind of kernel goes in its family's file (a new file for a new family)
as a function ``(sch, block name, params) -> (note, touched block names)`` that raises
NotApplicable when its pattern does not fit; dispatch._tvmfront_rule tries it before the
simpler rules (or, for a whole-kernel rule such as gemv, dispatch._schedule_prim_func).

Threads: parallel loops run on TVM's CPU thread pool, which takes half the logical CPUs on
x86 unless TVM_NUM_THREADS is set.
"""

from . import (analysis, conv, conv_forward, conv_phases, conv_weight_grad, deferred_writeback,
               dispatch, failures, gemm, gemv, int8, loops, pad_borders, padded_terms, params,
               phase_writes, predicates, reductions, spatial, tile_reads, window_blocks,
               window_reindex)
from .analysis import kernel_work, loop_kinds
from .dispatch import RULE_ATTR, SCHEDULED_ATTR, default_cpu_schedule, is_scheduled, \
    schedule_prim_func
from .failures import NotApplicable
from .params import SMALL_WORK, SYMBOLIC_EXTENT, CpuParams

__all__ = ["CpuParams", "NotApplicable", "RULE_ATTR", "SCHEDULED_ATTR", "SMALL_WORK",
           "SYMBOLIC_EXTENT", "default_cpu_schedule", "is_scheduled", "kernel_work",
           "loop_kinds", "schedule_prim_func"]

# In import order: a file imports only those before it (tests/test_layering.py).
FILES = (params, failures, analysis, loops, predicates, deferred_writeback, phase_writes,
         pad_borders, padded_terms, window_blocks, conv, spatial, gemm, window_reindex,
         conv_forward, conv_phases, conv_weight_grad, gemv, reductions, tile_reads, int8,
         dispatch)


def __getattr__(name):
    """Any name of the files, as when they were one module (tests and benches reach in for
    private ones: _tile_reduction, _walk_expr, the constants)."""
    for module in FILES:
        if name in vars(module):
            return vars(module)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
