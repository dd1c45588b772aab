"""Default schedules for CPU kernels of untuned builds.

TVM 0.27's CPU build applies no schedule: a kernel lowered from TE runs as its naive loop
nest, scalar, on one core. ``default_cpu_schedule(mod, target)`` (the build's schedule
stage, after any tuning records) gives every unscheduled PrimFunc a schedule for an LLVM CPU
target and records the rule in the kernel's ``tvmfront.schedule_rule`` attribute (visible in
``dump_ir``'s schedule stage). Rules, tried in this order:

0. tvmfront's GEMV - a matrix times a vector with both read contiguously along the
   reduction (a Linear layer at batch 1, its weight [N, K] row-major: see ``_gemv``);
1. ``dlight.cpu.GEMV`` - other matrix-vector kernels, unless its vector tile is wider than
   two SIMD registers (minutes of LLVM codegen: see ``_dlight_gemv``).
2. tvmfront's rule (below); for kernels without a multiply-accumulate, first in a mode that
   requires every reduction to get a register tile, then
3. ``dlight.cpu.Reduction`` (rows parallelized; large row reductions only), then
4. tvmfront's rule without that requirement.

tvmfront's rule, block by block on copies of the schedule (a failing primitive falls back to
a simpler schedule, never to a failed build):

- injective producers of injective blocks (pointwise chains, reshapes) are inlined;
- a reduction is register-tiled: the spatial axis whose vectors use the SIMD lanes best is
  split by the vector length and vectorized; operands strided along it (``x @ w.T``'s
  weight, a conv weight when vectorizing over output channels) are first packed into a
  copy with that axis last, when the copy is cheap next to the reduction; one or two other
  output axes form a register tile chosen so that operand loads are shared across it; the
  reduction loops sit between the outer loops and the tile; the tile accumulates in a small
  local buffer (``cache_write``, laid out with the vector axis last) written back together
  with the pointwise epilogue (bias add, ReLU); outer loops are fused just enough to feed
  ``num-cores`` threads and parallelized when the kernel is large enough;
- a reduction with no vectorizable axis gets a tile of independent scalar accumulators; a
  gather-form gradient indexed through ``// k`` and ``% k`` has those axes split by ``k``
  so that the indices become affine, with the small inner loops unrolled;
- a spatial block has its trailing loops fused as far as every access stays contiguous (or
  constant), split by a vector length that tiles the rows, vectorized; padding blocks are
  first split into a constant fill and an in-bounds copy (``decompose_padding``).

Symbolic extents (a batch size or sequence length given at run time, a ``tirx.Var``) are
planned as if they were SYMBOLIC_EXTENT (64): tile shapes, vector axes and the parallel
decision are those of the kernel at that size. Vectors use static axes only (a vector over a
symbolic extent would be predicated). A register tile that splits a symbolic axis first pads
it to a multiple of the tile (``pad_einsum``: zero-padded input copies, a padded output
copied out with the epilogue), so the tile itself carries no predicate; a block that is no
einsum (a conv window) or that tiles rows with scalar accumulators keeps its tiles to the
static axes instead. A reduction over a symbolic axis (a weight gradient summed over the
batch, batch statistics) is tiled and vectorized over its static output axes as usual.

A math library call (exp, log, tanh, ...) costs as much as CALL_ITERATIONS vector iterations
in the parallel decision: LLVM calls libm once per element even in vectorized loops, so a
softmax's exp-heavy loops run in parallel at sizes where a pointwise add would not.

Fallbacks are logged (``tvmfront.schedule`` logger) with the kernel, the rule and the cause.
A rule whose pattern does not fit a block says so by raising ``NotApplicable``: that is a
probe's answer, logged at debug level. Any other exception from a rule (a schedule primitive
refusing, a bug) is a failure: logged at warning level and counted, per kernel, in
``default_cpu_schedule``'s `fallbacks` (the build info's ``fallback_kernels``).

Reduction order is kept except by the GEMV rule (no other rfactor): every output element is
accumulated in the order of its reduction loops, so results equal the naive build's up to
LLVM's FMA contraction in fused pointwise chains (about 1e-7 relative). The GEMV rule sums
each row in `lanes` interleaved partial sums added at the end (about 1e-6 relative).

Threads: parallel loops run on TVM's CPU thread pool, which takes half the logical CPUs on
x86 unless TVM_NUM_THREADS is set.
"""

import contextvars
import logging
import math
import os

from ._tvm import arith, cpu_vector_bits, dlight, s_tir, structural_equal, tirx, tvm
from .config import logger

log = logger("schedule")

SCHEDULED_ATTR = "tirx.is_scheduled"
# Each kernel records the rule that scheduled it (visible in dump_ir's schedule stage).
RULE_ATTR = "tvmfront.schedule_rule"
# A parallel launch costs microseconds, and on a machine whose cores are shared a parallel
# region waits for its slowest thread: loops with fewer (vector) iterations than this stay on
# one core (about 50-100 us of single-core work).
PARALLEL_MIN_ITERATIONS = 1 << 17
# LLVM calls libm for these once per element even in vectorized loops (~3 ns for expf here):
# each call weighs this many vector iterations when deciding on parallel loops.
LIBRARY_CALLS = frozenset({"exp", "exp2", "exp10", "log", "log2", "log10", "log1p", "tanh",
                           "sigmoid", "erf", "pow", "sin", "cos", "tan", "atan", "sinh", "cosh"})
CALL_ITERATIONS = 8
# Scalar reductions without register tiles need this many times more iterations.
PLAIN_PARALLEL_PENALTY = 8
# Parallel loops are fused until they have this many iterations per core.
PARALLEL_CHUNKS_PER_CORE = 8
# Scalar accumulators in a register tile without vectors.
SCALAR_TILE = 8
# Fully unroll inner loops (register tile x innermost reduction) up to this many bodies.
UNROLL_MAX_BODY = 64
# Kernels below this many loop iterations count as trivially small (see `loop_kinds`).
SMALL_WORK = 1 << 12
# Pack a strided operand only when the copy is this many times cheaper than the reduction.
PACK_RATIO = 8
# An operand read along the vector axis with a large stride along the reduction and bigger
# than this (about an L2 cache) is packed into panels (see _pack_panels).
PANEL_MIN_BYTES = 2 << 20
# Reductions with an output of at most this size over operands of PANEL_MIN_BYTES or more
# use one-register vectors, leaving registers for a wider tile (_streams_operands).
STREAM_MAX_OUTPUT_BYTES = 256 << 10
# Symbolic extents (a batch size or sequence length known only at run time) are planned as if
# they were this size: tile shapes, vector axes and whether a kernel runs in parallel are those
# of the kernel at this size (see the module docstring).
SYMBOLIC_EXTENT = 64
# dlight's GEMV is used only when it vectorizes at most this many SIMD registers per operation
# (see _dlight_gemv: wider gathered tiles cost minutes of LLVM codegen).
GEMV_MAX_VECTOR_REGISTERS = 2
# tvmfront's GEMV computes this many output rows at once: one vector accumulator each, every
# load of the vector shared by the rows (4 beat 1, 2 and 8 rows, and 2- or 4-register
# accumulators, on the decode step's 128..512-wide Linear layers, AVX2).
GEMV_ROWS = 4


class CpuParams:
    """What the schedules need to know about an LLVM CPU target."""

    def __init__(self, target):
        self.vector_bits = cpu_vector_bits(target)
        cores = target.attrs.get("num-cores", None) if hasattr(target, "attrs") else None
        self.cores = int(cores) if cores else (os.cpu_count() or 1)
        # Vector registers kept for a reduction's accumulator tile: of x86's 16 (AVX2/SSE)
        # ~12 are left after the operands; AVX-512 and AArch64 have 32.
        triple = str(target.attrs.get("mtriple", "")) if hasattr(target, "attrs") else ""
        wide = self.vector_bits >= 512 or triple.startswith(("aarch64", "arm64"))
        self.acc_registers = 24 if wide else 12

    def lanes(self, dtype):
        bits = _dtype_bits(dtype)
        return max(2, self.vector_bits // max(8, bits))


class NotApplicable(ValueError):
    """A rule's pattern does not fit this block: the answer of a probe, not a failure."""


class _Kernel:
    """The kernel being scheduled: its name and the rules that failed on it."""

    def __init__(self, name):
        self.name = name
        self.failures = {}  # rule -> cause, first failure of each rule


_current = contextvars.ContextVar("tvmfront_schedule_kernel", default=None)


def _failed(rule, err):
    """A rule raised `err`: NotApplicable is a probe's answer (debug); anything else is a rule
    meant to apply that failed, so the kernel falls back to a simpler schedule (warning)."""
    kernel = _current.get() or _Kernel("?")
    if isinstance(err, NotApplicable):
        log.debug("kernel %s: rule %s does not apply (%s)", kernel.name, rule, err)
    elif rule not in kernel.failures:  # tiled_only and the full rule retry the same blocks
        kernel.failures[rule] = cause = f"{type(err).__name__}: {_first_lines(err)}"
        log.warning("kernel %s: schedule rule %s failed, falling back to a simpler schedule "
                    "(%s)", kernel.name, rule, cause)


def _probe(rule, err):
    """A schedule primitive used as its own applicability check refused (debug level)."""
    if log.isEnabledFor(logging.DEBUG):  # TVM's messages hold the IR: only when asked for
        kernel = _current.get() or _Kernel("?")
        log.debug("kernel %s: %s does not apply (%s: %s)", kernel.name, rule,
                  type(err).__name__, _first_lines(err))


def _first_lines(err, limit=300):
    """An exception's message without the IR that TVM prints with it: the lines after its
    last "Error message:", else the first line."""
    text = str(err).strip()
    head, marker, tail = text.rpartition("Error message:")
    lines = [ln.strip() for ln in (tail if marker else text).splitlines() if ln.strip()]
    text = " ".join(lines[:3] if marker else lines[:1]) or "(no message)"
    return text if len(text) <= limit else text[:limit] + "..."


def _dtype_bits(dtype):
    digits = "".join(ch for ch in str(dtype) if ch.isdigit())
    return int(digits) if digits else 32


# ================================================================================================
# Entry points
# ================================================================================================

def default_cpu_schedule(mod, target, report=None, fallbacks=None):
    """Schedule every unscheduled PrimFunc of `mod` for the LLVM CPU `target`.

    Returns a new IRModule; PrimFuncs already carrying ``tirx.is_scheduled`` (tuning records,
    dlight) are kept as they are. `report`, when a dict, receives {kernel name: rule};
    `fallbacks`, when a dict, receives {kernel name: ["rule: cause", ...]} for each kernel on
    which a rule meant to apply failed (it got a simpler schedule, or none).
    """
    params = CpuParams(target)
    updates = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and not is_scheduled(func):
            failures = {}
            func, rule = schedule_prim_func(func, target, params, gvar.name_hint, failures)
            updates[gvar] = func.with_attr(RULE_ATTR, rule)
            if report is not None:
                report[gvar.name_hint] = rule
            if fallbacks is not None and failures:
                fallbacks[gvar.name_hint] = [f"{r}: {c}" for r, c in failures.items()]
    mod = mod.clone()  # the caller's module stays as it was
    for gvar, func in updates.items():
        mod.update_func(gvar, func)
    return mod


def is_scheduled(func):
    attrs = func.attrs
    return attrs is not None and SCHEDULED_ATTR in attrs and bool(attrs[SCHEDULED_ATTR])


def schedule_prim_func(func, target, params=None, name=None, failures=None):
    """(scheduled PrimFunc, rule description). Never raises: worst case the func is returned
    unchanged with rule 'none (...)'. Rules that failed on it are logged (see the module
    docstring) and, when `failures` is a dict, recorded there as {rule: cause}."""
    params = params or CpuParams(target)
    if name is None:
        name = str((func.attrs or {}).get("global_symbol", "main"))
    kernel = _Kernel(name)
    token = _current.set(kernel)
    try:
        return _schedule_prim_func(func, target, params)
    finally:
        _current.reset(token)
        if failures is not None:
            failures.update(kernel.failures)


def _schedule_prim_func(func, target, params):
    func = _narrow_indices(func)
    work = kernel_work(func, symbolic=True)
    if _max_block_iterations(func) <= 1:
        return _mark(func), "none (trivial: 0-d)"
    try:
        sch = s_tir.Schedule(func)
        contraction = _has_contraction(sch)
    except Exception as err:  # noqa: BLE001 - never fail a build over a schedule
        _failed("analysis", err)
        return func, f"none (not schedulable: {type(err).__name__})"

    candidates = []
    if contraction:  # GEMV is one
        candidates.append(("tvmfront.gemv", lambda: _gemv(func, params)))
        candidates.append(("dlight.cpu.GEMV", lambda: _dlight_gemv(func, target, params)))
    else:
        # Row reductions: tvmfront's register tiles when every reduction tiles, else
        # dlight's Reduction (it parallelizes rows: only for kernels large enough to gain).
        candidates.append(("tvmfront (tiled only)",
                           lambda: _tvmfront_rule(func, params, tiled_only=True)))
        if work is not None and work >= PARALLEL_MIN_ITERATIONS:
            candidates.append(("dlight.cpu.Reduction",
                               lambda: _dlight(dlight.cpu.Reduction(), func, target)))
    candidates.append(("tvmfront", lambda: _tvmfront_rule(func, params)))
    for name, attempt in candidates:
        try:
            result = attempt()
        except Exception as err:  # noqa: BLE001 - logged; the next rule is simpler
            _failed(name, err)
            continue
        if result is None:  # dlight's rule does not match, or was refused (see _dlight_gemv)
            log.debug("kernel %s: rule %s does not apply", _current.get().name, name)
            continue
        new_func, detail = result
        name = name.replace(" (tiled only)", "")
        return _mark(new_func), f"{name}{': ' + detail if detail else ''}"
    return func, "none (no rule applied)"


def _narrow_indices(func):
    """The kernel with every index, loop and shape in int32, when all its buffers fit.

    Relax gives int64 shapes and TE ops compute some extents as Python ints, so a kernel can
    index one buffer with int64 and int32 variables mixed (a conv's [n, o, i, j] with n, o
    from the input and i, j from its computed output size). Layout transforms (packing an
    operand) refuse such accesses, and the casts between the two widths hide strides from the
    linear analysis: the kernel would fall back to a scalar schedule."""
    for buf in _buffers(func):
        size = math.prod(_const(d) or (1 << 31) for d in buf.shape)
        if size >= 1 << 31:
            return func
    # The pass refuses int64 buffer parameters (their data could be indices): int64 labels.
    allocated = set()
    _walk_stmts(func.body, lambda n: allocated.update(
        b.name for b in getattr(n, "alloc_buffers", None) or []))
    wide = sorted({buf.name for buf in _buffers(func)
                   if str(buf.dtype) in ("int64", "uint64") and buf.name not in allocated})
    if wide:
        _failed("narrow indices to int32", NotApplicable(f"int64 data in {', '.join(wide)}"))
        return func
    try:
        return tirx.transform.ForceNarrowIndexToInt32()(tvm.IRModule({"main": func}))["main"]
    except Exception as err:  # noqa: BLE001 - keep the kernel as it is
        _failed("narrow indices to int32", err)
        return func


def _buffers(func):
    """Every buffer a kernel's blocks read, write or allocate."""
    found = []

    def visit(node):
        found.extend(getattr(node, "alloc_buffers", None) or [])
        for region in list(getattr(node, "reads", None) or []) + \
                list(getattr(node, "writes", None) or []):
            found.append(region.source)

    _walk_stmts(func.body, visit)
    return found


def _mark(func):
    return func.with_attr(SCHEDULED_ATTR, True)


def _gemv(func, params):
    """A matrix-vector product y[n] = sum_k w[n, k] * x[k] (+ a pointwise epilogue) whose
    operands are all contiguous along k: vectorized along k, as a CPU GEMV kernel is.

    The other rules vectorize an output axis, along which such a weight is strided: scalar
    tiles (tvmfront's rule) or gathers (dlight's GEMV), 3-12x slower on the decode step's
    Linear layers. Here k is split by the vector length and rfactored: GEMV_ROWS rows keep
    one vector accumulator each over k (every load of x shared by them), then each row's
    lanes are summed and the epilogue (bias, GELU) applied to those rows. Rows run in
    parallel when the kernel is large enough. None (not applicable) for anything else: more
    than one output axis wider than 1 (a GEMM, attention's batched products), a symbolic
    axis, k not a multiple of the vector length, an operand strided along k."""
    sch = s_tir.Schedule(func)
    _inline_spatial(sch)
    blocks = [b for b in _root_blocks(sch) if _reduction_iters(sch.get(b))]
    if len(blocks) != 1:
        return None
    block = blocks[0]
    try:
        info = _BlockInfo(sch, block)
    except NotApplicable:
        return None
    wide = [k for k in info.spatial if info.extents[k] > 1]
    if "O" in info.kinds or len(info.reduction) != 1 or len(wide) != 1 or info.symbolic \
            or str(info.dtype) not in ("float32", "float64") or len(info.reads) != 2:
        return None
    (r,), (n,) = info.reduction, wide
    lanes = params.lanes(info.dtype)
    # one operand varies along n (the matrix), the other not (the vector); both contiguous in k
    if info.extents[r] % lanes or any(strides[r] != 1 for _, _, strides in info.reads) \
            or sorted(strides[n] == 0 for _, _, strides in info.reads) != [False, True]:
        return None
    rows = _largest_divisor(info.extents[n], GEMV_ROWS)
    unit = [info.loops[k] for k in info.spatial if k != n]
    jo, ji = sch.split(info.loops[n], [None, rows])
    ko, ki = sch.split(info.loops[r], [None, lanes])
    sch.reorder(*unit, jo, ko, ji, ki)
    partial = sch.rfactor(ki, len(info.write.region))  # [..., lanes]: the accumulators
    *unit, jo, ko, ji, ki = sch.get_loops(partial)  # rfactor made these loops anew
    # the lanes' sum and the epilogue, for the rows of one tile, right after it
    sch.reverse_compute_at(block, jo, preserve_unit_loops=True)
    for consumer in sch.get_consumers(block):
        sch.reverse_compute_at(consumer, jo, preserve_unit_loops=True)
    parallel = _parallel_worth_it(info, lanes, params)
    if parallel:  # before decompose_reduction, which leaves blocks parallel() refuses
        sch.parallel(sch.fuse(*unit, jo) if unit else jo)
    sch.unroll(ji)
    sch.vectorize(ki)
    init = sch.decompose_reduction(partial, ko)
    init_loops = sch.get_loops(init)
    sch.unroll(init_loops[-2])
    sch.vectorize(init_loops[-1])
    return sch.mod["main"], f"{rows} rows x v{lanes} along k{', parallel' if parallel else ''}"


def _dlight_gemv(func, target, params):
    """dlight's GEMV, unless it vectorizes a tile of more than GEMV_MAX_VECTOR_REGISTERS.

    dlight's GEMV vectorizes a 64- or 128-lane tile of the output axis, along which the weight
    is strided (so every lane is a gather), and unrolls up to 256 reduction steps of it. Where
    the tile divides the output, LLVM gets that whole gathered, unrolled code: the MLP's
    64->256 and 256->256 Linear layers at batch 1 took ~170 s and ~15 s of LLVM codegen and ran
    slower than tvmfront's rule (6.6 vs 3.3 us, 21.8 vs 12.5 us; that rule builds each in 0.02
    s). Where the tile leaves a remainder (a predicated block: LeNet's 120, 84 and 10 outputs)
    the loop is not really vectorized: it builds in under 0.2 s and beats tvmfront's rule."""
    result = _dlight(dlight.cpu.GEMV(), func, target)
    if result is None:
        return None
    limit = GEMV_MAX_VECTOR_REGISTERS * params.lanes("float32")
    wide = []

    def visit(node, vectorized=None):
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.VECTORIZED:
            ext = _const(node.extent)
            vectorized = ext if ext is not None and ext > limit else None
        elif vectorized and type(node).__name__ in ("SBlockRealize", "BlockRealize"):
            predicate = node.predicate
            if isinstance(predicate, tirx.IntImm) and predicate.value:  # unpredicated
                wide.append(vectorized)
        for child in _children(node):
            visit(child, vectorized)

    visit(result[0].body)
    return None if wide else result


def _dlight(rule, func, target):
    sch = rule.apply(func, target, False)
    if isinstance(sch, (list, tuple)):
        sch = sch[0] if sch else None
    if sch is None:
        return None
    new = sch.mod["main"]
    if not loop_kinds(new) & {"parallel", "vectorized"}:
        return None
    return new, ""


# ================================================================================================
# Inspection helpers (used by tests and reports too)
# ================================================================================================

_KIND_NAMES = {int(tirx.ForKind.SERIAL): "serial", int(tirx.ForKind.PARALLEL): "parallel",
               int(tirx.ForKind.VECTORIZED): "vectorized", int(tirx.ForKind.UNROLLED): "unrolled"}


def _children(node):
    for attr in ("body", "block", "then_case", "else_case", "init"):
        child = getattr(node, attr, None)
        if child is not None and isinstance(child, tirx.Stmt):
            yield child
    seq = getattr(node, "seq", None)
    if seq is not None:
        yield from seq


def _walk_stmts(stmt, fn):
    stack = [stmt]
    while stack:
        node = stack.pop()
        fn(node)
        stack.extend(_children(node))


def loop_kinds(func):
    """Set of loop kinds ('serial', 'parallel', 'vectorized', 'unrolled', ...) in a PrimFunc."""
    kinds = set()

    def visit(node):
        if isinstance(node, tirx.For):
            kinds.add(_KIND_NAMES.get(int(node.kind), str(node.kind)))

    _walk_stmts(func.body, visit)
    return kinds


def kernel_work(func, symbolic=False):
    """Total loop iterations of a PrimFunc (sum over loop nests of the product of extents).
    An extent that is not a constant makes it None, or with `symbolic`, counts as
    SYMBOLIC_EXTENT."""
    total = [0]
    ok = [True]

    def visit(node, scale=1):
        if isinstance(node, tirx.For):
            ext = _size(node.extent) if symbolic else _const(node.extent)
            if ext is None:
                ok[0] = False
                return
            for child in _children(node):
                visit(child, scale * ext)
            return
        if type(node).__name__ in ("SBlockRealize", "BlockRealize"):
            total[0] += scale
        for child in _children(node):
            visit(child, scale)

    visit(func.body)
    return total[0] if ok[0] else None


def _max_block_iterations(func):
    """Largest iteration count of any single block (1 for kernels of 0-d computations)."""
    most = [0]

    def visit(node, scale=1):
        if isinstance(node, tirx.For):
            scale *= _size(node.extent) or 2
        elif type(node).__name__ in ("SBlockRealize", "BlockRealize"):
            most[0] = max(most[0], scale)
        for child in _children(node):
            visit(child, scale)

    visit(func.body)
    return most[0]


def _const(expr):
    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def _size(expr):
    """An extent as an int for planning: its value when constant; when symbolic (a batch size
    known at run time), its value with every variable at SYMBOLIC_EXTENT (see there)."""
    value = _const(expr)
    if value is not None or not isinstance(expr, tirx.Expr):
        return value
    analyzer = arith.Analyzer()
    for var in tirx.analysis.undefined_vars(expr):
        analyzer.bind(var, tirx.IntImm(var.ty.dtype, SYMBOLIC_EXTENT))
    return _const(analyzer.simplify(expr))


def _unroll_extent(sch, loop):
    """A loop's extent for unrolling decisions: a symbolic one cannot be unrolled (infinite)."""
    return _const(sch.get(loop).extent) or math.inf


def _is_symbolic(expr):
    return _const(expr) is None


def _same_extent(a, b):
    return _const(a) == _const(b) if not (_is_symbolic(a) or _is_symbolic(b)) else \
        structural_equal(a, b)


# ================================================================================================
# Block analysis
# ================================================================================================

def _walk_expr(expr, fn):
    stack = [expr]
    while stack:
        e = stack.pop()
        fn(e)
        for attr in ("a", "b", "value", "condition", "true_value", "false_value", "base",
                     "stride", "body"):
            child = getattr(e, attr, None)
            if isinstance(child, tirx.Expr):
                stack.append(child)
        for attr in ("args", "indices"):
            children = getattr(e, attr, None)
            if children is not None:
                stack.extend(c for c in children if isinstance(c, tirx.Expr))


def _is_contraction_store(stmt):
    """out = out + f(loads...) where f multiplies two loads of different buffers."""
    store = stmt.body
    if not isinstance(store, tirx.BufferStore) or stmt.init is None:
        return False
    found = [False]

    def visit(e):
        if isinstance(e, tirx.Mul):
            bufs = set()
            for side in (e.a, e.b):
                _walk_expr(side, lambda x: bufs.add(x.source.name)
                           if isinstance(x, tvm.ir.TensorLoad) else None)
            if len(bufs) >= 2:
                found[0] = True

    _walk_expr(store.value, visit)
    return found[0]


def _root_blocks(sch):
    root = sch.get_sblock("root")
    return list(sch.get_child_blocks(root))


def _has_contraction(sch):
    return any(_is_contraction_store(sch.get(b)) and _reduction_iters(sch.get(b))
               for b in _root_blocks(sch))


def _reduction_iters(stmt):
    return [iv for iv in stmt.iter_vars if int(iv.iter_type) == int(tirx.IterVar.CommReduce)]


def _row_major(shape):
    strides, acc = [], 1
    for ext in reversed(shape):
        strides.append(acc)
        acc *= ext
    return list(reversed(strides))


def _access_strides(region, variables, analyzer=None):
    """Flattened stride of a buffer access with respect to each block variable:
    {index: int}, None for variables the access depends on non-linearly (or non-pointwise).
    `analyzer` knows the variables' ranges (so that reshape indices such as (4i + j) % 64
    simplify to affine ones)."""
    shape = [_size(s) for s in region.source.shape]
    if any(s is None for s in shape):
        return {k: None for k in range(len(variables))}
    strides = {k: 0 for k in range(len(variables))}
    position = {v.name: k for k, v in enumerate(variables)}
    if analyzer is not None and all(_const(r.extent) == 1 for r in region.region):
        # The flattened offset first: a reshape's (i // 4) * 4 + i % 4 is just i.
        flat = 0
        for rng, dim_stride in zip(region.region, _row_major(shape)):
            flat = flat + rng.min * dim_stride
        coeffs = arith.detect_linear_equation(analyzer.canonical_simplify(flat), list(variables))
        if coeffs and all(_const(c) is not None for c in coeffs[:-1]):
            return {k: _const(c) for k, c in enumerate(coeffs[:-1])}
    for rng, dim_stride in zip(region.region, _row_major(shape)):
        index = analyzer.simplify(rng.min) if analyzer is not None else rng.min
        used = [position[v.name] for v in tirx.analysis.undefined_vars(index)
                if v.name in position]
        coeffs = arith.detect_linear_equation(index, list(variables)) if used else []
        if used and (not coeffs or _const(rng.extent) != 1
                     or any(_const(c) is None for c in coeffs[:-1])):
            for k in used:
                strides[k] = None
            continue
        for k in used:
            if strides[k] is not None:
                strides[k] += _const(coeffs[k]) * dim_stride
    return strides


class _BlockInfo:
    """Iteration space and access strides of one block with trivially bound loops."""

    def __init__(self, sch, block):
        self.block = block
        self.stmt = stmt = sch.get(block)
        self.name = stmt.name_hint
        self.loops = list(sch.get_loops(block))
        self.vars = [iv.var for iv in stmt.iter_vars]
        self.kinds = ["R" if int(iv.iter_type) == int(tirx.IterVar.CommReduce) else
                      "S" if int(iv.iter_type) == int(tirx.IterVar.DataPar) else "O"
                      for iv in stmt.iter_vars]
        # Symbolic extents as SYMBOLIC_EXTENT; `symbolic` lists their axes.
        self.extents = [_size(iv.dom.extent) for iv in stmt.iter_vars]
        self.symbolic = {k for k, iv in enumerate(stmt.iter_vars) if _is_symbolic(iv.dom.extent)}
        if len(self.loops) != len(self.vars) or any(e is None for e in self.extents):
            raise NotApplicable(f"block {self.name}: loops are not trivially bound")
        for loop, iv in zip(self.loops, stmt.iter_vars):
            if not _same_extent(sch.get(loop).extent, iv.dom.extent):
                raise NotApplicable(f"block {self.name}: loops are not trivially bound")
        if len(stmt.writes) != 1:
            raise NotApplicable(f"block {self.name}: {len(stmt.writes)} outputs")
        self.write = stmt.writes[0]
        self.dtype = self.write.source.dtype
        analyzer = arith.Analyzer()
        for iv in stmt.iter_vars:
            analyzer.bind(iv.var, iv.dom)
        self.write_strides = _access_strides(self.write, self.vars, analyzer)
        self.reads = [(i, r, _access_strides(r, self.vars, analyzer))
                      for i, r in enumerate(stmt.reads)
                      if not r.source.same_as(self.write.source)]
        self.work = math.prod(self.extents)
        self.calls = _library_calls(stmt)

    @property
    def spatial(self):
        return [k for k, kind in enumerate(self.kinds) if kind == "S"]

    @property
    def reduction(self):
        return [k for k, kind in enumerate(self.kinds) if kind == "R"]


# ================================================================================================
# Choosing factors
# ================================================================================================

def _vector_factor(extent, lanes, max_registers=2, rows=()):
    """Largest divisor V of `extent` (2 <= V <= max_registers * lanes) with the best use of
    vector lanes; None when no divisor fits. `rows`: extents of the inner dimensions fused
    into this loop; a vector must tile them (V divides a row or covers whole rows), or its
    indices stop being a simple ramp and the vector code turns into gathers."""
    best = None
    for v in range(2, min(extent, max_registers * lanes) + 1):
        if extent % v or any(v % r and r % v for r in rows):
            continue
        if v > lanes and v % lanes:  # e.g. 14 lanes of AVX2 = 8 + 4 + 2: slower than 7
            continue
        efficiency = v / (math.ceil(v / lanes) * lanes)
        key = (efficiency, v)
        if best is None or key > best[0]:
            best = (key, v)
    return best[1] if best else None


def _largest_divisor(n, limit):
    for f in range(min(n, max(1, limit)), 0, -1):
        if n % f == 0:
            return f
    return 1


# ================================================================================================
# tvmfront's rule
# ================================================================================================

def _parallel_worth_it(info, lanes, params):
    """A parallel launch costs microseconds: only loops with enough (vector) iterations, where
    each call of a math library function (exp: never vectorized) weighs CALL_ITERATIONS."""
    iterations = info.work / max(1, lanes) + info.work * info.calls * CALL_ITERATIONS
    return params.cores > 1 and iterations >= PARALLEL_MIN_ITERATIONS


def _parallelize(sch, loops, params):
    """Fuse the shortest prefix of `loops` that gives every core a few chunks and mark it
    parallel (fusing more only adds index arithmetic). Returns (loops after fusion, note)."""
    extents = [_size(sch.get(lp).extent) for lp in loops]
    want = PARALLEL_CHUNKS_PER_CORE * params.cores
    count, product = len(loops), 1
    for i, ext in enumerate(extents):
        product *= ext
        if product >= want:
            count = i + 1
            break
    if product < 2:
        return loops, ""
    head = sch.fuse(*loops[:count]) if count > 1 else loops[0]
    sch.parallel(head)
    return [head] + list(loops[count:]), "parallel"


def _tvmfront_rule(func, params, tiled_only=False):
    sch = s_tir.Schedule(func)
    _inline_spatial(sch)
    notes = []
    done = set()
    # Reductions first (they may absorb epilogues and create packing blocks).
    for name in [sch.get(b).name_hint for b in _root_blocks(sch)]:
        try:
            block = sch.get_sblock(name)
        except Exception as err:  # noqa: BLE001 - inlined or renamed meanwhile
            _probe(f"block {name} (absorbed by an earlier block)", err)
            continue
        if not _reduction_iters(sch.get(block)):
            continue
        for rule, strategy in (("tile_reduction", _tile_reduction),
                               ("gather_reduction", _gather_reduction),
                               ("tile_reduction_scalar", _tile_reduction_scalar),
                               ("plain_reduction", _plain_reduction)):
            trial = sch.copy()
            try:
                note, touched = strategy(trial, name, params)
            except Exception as err:  # noqa: BLE001 - fall back to a simpler schedule
                _failed(f"{rule} on block {name}", err)
                continue
            sch = trial
            notes.append(f"{name}={note}")
            done.update(touched)
            break
        else:
            if tiled_only:
                raise NotApplicable(f"reduction {name} left unscheduled")
        if tiled_only and not notes[-1].startswith(f"{name}=tiled"):
            raise NotApplicable(f"reduction {name} not tiled")
        done.add(name)
    for block in _root_blocks(sch):
        name = sch.get(block).name_hint
        if name in done:
            continue
        trial = sch.copy()
        try:
            note = _schedule_spatial(trial, block, params)  # names may repeat (pad_einsum)
        except Exception as err:  # noqa: BLE001 - the block keeps its plain loops
            _failed(f"schedule_spatial on block {name}", err)
            continue
        sch = trial
        if note:
            notes.append(f"{name}={note}")
    new = sch.mod["main"]
    if not loop_kinds(new) & {"parallel", "vectorized"} and \
            (kernel_work(new, symbolic=True) or 0) >= SMALL_WORK:
        notes.append("no parallel/vector loop")
    return new, ", ".join(notes)


def _inline_spatial(sch):
    """Inline injective blocks into injective consumers (pointwise chains, reshapes) until
    nothing changes. Producers of reductions (padding) stay separate."""
    changed = True
    while changed:
        changed = False
        blocks = _root_blocks(sch)
        outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
        for block in blocks:
            stmt = sch.get(block)
            if stmt.name_hint in outputs or _reduction_iters(stmt):
                continue
            consumers = sch.get_consumers(block)
            if not consumers or any(_reduction_iters(sch.get(c)) for c in consumers):
                continue
            try:
                sch.compute_inline(block)
            except Exception as err:  # noqa: BLE001 - TVM's own check: not inlinable
                _probe(f"compute_inline of block {stmt.name_hint}", err)
                continue
            changed = True
            break


def _tile_reduction(sch, name, params, vector=True):
    """Register-tiled, parallel schedule of a reduction. With `vector`, the output's
    contiguous axis (along which every operand must be contiguous or constant, after packing
    a strided operand when cheap) is vectorized and the tile holds vector accumulators;
    without, the tile holds scalar accumulators (independent chains for the FPU)."""
    block = sch.get_sblock(name)
    info = _BlockInfo(sch, block)
    if "O" in info.kinds or not info.reduction or not info.spatial:
        raise NotApplicable("not a plain reduction")
    lanes = params.lanes(info.dtype)
    packed = []
    v = vec = None
    if vector:
        v, vec = _choose_vector_axis(info, lanes)
        if vec > lanes and vec % lanes == 0 and _streams_operands(info):
            # One register per vector leaves room for a register tile over a second output
            # axis: fewer passes over operands that do not fit in cache.
            vec = lanes
        # Operands strided along v: pack them into a copy whose last dimension is v's.
        for _ in range(len(info.reads)):
            strided = [(i, r) for i, r, strides in info.reads if strides[v] not in (0, 1)]
            if not strided:
                break
            index, region = strided[0]
            _pack_operand(sch, info, index, region, v)
            packed.append(region.source.name)
            block = sch.get_sblock(name)
            info = _BlockInfo(sch, block)
        if any(strides[v] not in (0, 1) for _, _, strides in info.reads):
            raise NotApplicable("an operand is strided along the vector axis")
        panel = _panel_operand(info, v, vec)
        if panel is not None:
            _pack_panels(sch, info, *panel, v, vec)
            packed.append(f"{panel[1].source.name} (panels)")
            info = _BlockInfo(sch, sch.get_sblock(name))
        budget = max(1, params.acc_registers // math.ceil(vec / lanes))
    else:
        panel = None
        if _index_divisors(info.stmt, info.vars):
            raise NotApplicable("strided-window gather: see _plain_reduction")
        budget = SCALAR_TILE

    def reuse(k):  # operand loads shared across a tile along axis k (vector loads count 2)
        return sum((2 if v is not None and strides[v] == 1 else 1)
                   for _, _, strides in info.reads if strides[k] == 0)

    tiles = {}
    for k in sorted((k for k in info.spatial if k != v), key=lambda k: (-reuse(k), -k))[:2]:
        if reuse(k) == 0 or budget <= 1:
            break
        f = _largest_divisor(info.extents[k], budget)
        if f > 1:
            tiles[k] = f
            budget //= f
    if not vector and not tiles:
        # No reuse to exploit: independent accumulators along the innermost spatial axis.
        k = next((k for k in reversed(info.spatial) if info.extents[k] > 1), None)
        f = _largest_divisor(info.extents[k], budget) if k is not None else 1
        if f < 2:
            raise NotApplicable("nothing to tile")
        tiles[k] = f
    # A kernel worth running in parallel keeps a few outer iterations per core.
    if _parallel_worth_it(info, vec or 1, params):
        def outer_count():
            spatial = math.prod(info.extents[k] for k in info.spatial)
            return spatial // math.prod(tiles.values()) // (vec or 1)

        while tiles and outer_count() < params.cores:
            k = max(tiles, key=tiles.get)
            tiles[k] = _largest_divisor(info.extents[k], tiles[k] - 1)
            if tiles[k] == 1:
                del tiles[k]
        if not vector and not tiles:
            raise NotApplicable("nothing to tile")
    try:
        padded = _pad_symbolic_tiles(sch, info, tiles, vector)
    except Exception as err:  # noqa: BLE001 - TVM's own check: not an einsum (a conv window)
        _probe(f"pad_einsum of block {name}", err)
        padded = False
        tiles = {k: f for k, f in tiles.items() if k not in info.symbolic}
        if not vector and not tiles:
            raise NotApplicable("only a symbolic axis to tile") from err
    if padded:
        block = sch.get_sblock(name)
        info = _BlockInfo(sch, block)

    outer, inner, red = [], [], []
    vec_loop = None
    for k, loop in enumerate(info.loops):
        if info.kinds[k] == "R":
            red.append(loop)
        elif k == v:
            o, vec_loop = sch.split(loop, factors=[None, vec])
            # With panels, the panel index runs outermost: one panel stays in cache while
            # every tile of the other axes sweeps it.
            if panel is not None:
                outer.insert(0, o)
            else:
                outer.append(o)
        elif k in tiles:
            o, i = sch.split(loop, factors=[None, tiles[k]])
            outer.append(o)
            inner.append(i)
        else:
            outer.append(loop)
    sch.reorder(*outer, *red, *inner, *([vec_loop] if vec_loop is not None else []))
    parallel = ""
    if _parallel_worth_it(info, vec or 1, params):
        outer, parallel = _parallelize(sch, outer, params)
    anchor = outer[-1]

    # Accumulate the register tile in a local buffer; write it back with the epilogue.
    writeback = sch.cache_write(block, 0, "global")
    if v is not None and info.write_strides[v] != 1:
        # The output is strided along v: lay the accumulator out with v's dimension last.
        d = _packable_dim(info.write, info.vars[v])
        ndim = len(info.write.region)
        if d != ndim - 1:
            sch.transform_layout(block, ("write", 0),
                                 lambda *idx: [idx[i] for i in range(ndim) if i != d] + [idx[d]])
    sch.reverse_compute_at(writeback, anchor, preserve_unit_loops=True)
    epilogue = _absorb_epilogues(sch, writeback)
    tile_points = math.prod(tiles.values())
    last_red = red[-1]
    if _unroll_extent(sch, last_red) * tile_points <= UNROLL_MAX_BODY and len(red) > 1:
        sch.unroll(last_red)
    for loop in inner:
        sch.unroll(loop)
    if vec_loop is not None:
        sch.vectorize(vec_loop)
    _vectorize_innermost(sch, writeback, lanes)
    # Last: the update block loses its init, and with it the checks other primitives need.
    init = sch.decompose_reduction(block, red[0])
    _vectorize_innermost(sch, init, lanes)
    touched = {sch.get(init).name_hint, sch.get(writeback).name_hint, name}
    tile = "x".join(str(tiles[k]) for k in sorted(tiles))
    note = (f"tiled[{tile}{'x' if tile and vec else ''}{f'v{vec}' if vec else ' scalar'}"
            f"{', parallel' if parallel else ''}"
            f"{', packed ' + '+'.join(packed) if packed else ''}"
            f"{', +' + '+'.join(epilogue) if epilogue else ''}]")
    return note, touched


def _pad_symbolic_tiles(sch, info, tiles, vector):
    """Pad the block's symbolic axes that `tiles` splits to multiples of their tile factors
    (``pad_einsum``: inputs are copied into zero-padded buffers, the output is computed into a
    padded buffer and copied out). Split without padding, a symbolic axis predicates every
    point of the tile, which keeps the accumulators out of registers and the tile's buffer
    from being compacted. Returns whether anything was padded."""
    padding = [tiles[k] if k in info.symbolic and k in tiles else 1
               for k in range(len(info.vars))]
    if all(p == 1 for p in padding):
        return False
    if not vector:  # row reductions (loss, softmax): copies cost more than the tile gains
        raise NotApplicable("scalar tile over a symbolic axis")
    sch.pad_einsum(info.block, padding)
    return True


def _bytes(buf):
    return math.prod(_size(d) for d in buf.shape) * _dtype_bits(buf.dtype) // 8


def _streams_operands(info):
    """A reduction with a small output (a weight gradient) over operands larger than a cache:
    every pass of its register tiles over the reduction streams them from memory again."""
    return (_bytes(info.write.source) <= STREAM_MAX_OUTPUT_BYTES
            and sum(_bytes(r.source) for _, r, _ in info.reads) >= PANEL_MIN_BYTES)


def _panel_operand(info, v, vec):
    """(read index, region) of an operand worth packing into panels for vector axis v: read
    contiguously along v, reused across another output axis (stride 0 there), with a large
    stride along a reduction (the weight of a big GEMM: each step of the reduction would
    touch a new row, rows 4 KiB apart alias in the L1 cache) and bigger than PANEL_MIN_BYTES."""
    for index, region, strides in info.reads:
        if strides[v] != 1 or any(strides[k] is None for k in range(len(info.vars))):
            continue
        if not any(strides[k] == 0 for k in info.spatial if k != v):
            continue
        if not any(strides[k] >= 64 for k in info.reduction):
            continue
        d = _packable_dim(region, info.vars[v])
        if _bytes(region.source) < PANEL_MIN_BYTES or d is None:
            continue
        # Panels must tile the dimension, which the tile must read at exactly v (a window
        # offset such as i + kh would straddle two panels), and be more than one.
        extent = _const(region.source.shape[d])
        if extent is not None and extent % vec == 0 and extent > vec and \
                region.region[d].min.same_as(info.vars[v]):
            return index, region
    return None


def _pack_panels(sch, info, index, region, v, vec):
    """Copy an operand into panels: its dimension d indexed by v becomes [d // vec, ...,
    d % vec], so the slice one register tile reads along the reduction is contiguous."""
    d = _packable_dim(region, info.vars[v])
    packed = sch.cache_read(info.block, index, "global")
    ndim = len(region.region)
    sch.transform_layout(packed, ("write", 0), lambda *idx: [idx[d] // vec] + [
        idx[i] for i in range(ndim) if i != d] + [idx[d] % vec])
    return packed


def _packable_dim(region, var):
    """The one dimension of a point access indexed by `var` (with coefficient 1), or None."""
    if any(_const(r.extent) != 1 for r in region.region):
        return None
    dims = [d for d, rng in enumerate(region.region)
            if any(x.name == var.name for x in tirx.analysis.undefined_vars(rng.min))]
    if len(dims) != 1:
        return None
    coeffs = arith.detect_linear_equation(region.region[dims[0]].min, [var])
    return dims[0] if coeffs and _const(coeffs[0]) == 1 else None


def _choose_vector_axis(info, lanes):
    """(axis, vector length) for a reduction's register tile: the spatial axis whose vectors
    use the lanes best, minus the cost of packing operands that are strided along it and
    of a strided write-back. Raises when no axis qualifies."""
    best = None
    for v in info.spatial:
        if v in info.symbolic:  # its last vector would be predicated: scalar code
            continue
        vec = _vector_factor(info.extents[v], lanes)
        if vec is None:
            continue
        score = vec / (math.ceil(vec / lanes) * lanes)
        feasible = True
        for _, region, strides in info.reads:
            if strides[v] in (0, 1):
                continue
            size = math.prod(_size(s) for s in region.source.shape)
            if _packable_dim(region, info.vars[v]) is None or size * PACK_RATIO > info.work:
                feasible = False
                break
            score -= 0.02 + 4 * size / info.work
        if not feasible:
            continue
        if info.write_strides[v] != 1:
            if _packable_dim(info.write, info.vars[v]) is None:
                continue
            score -= 0.05
        if best is None or score > best[0]:
            best = (score, v, vec)
    if best is None:
        raise NotApplicable("no vectorizable output axis")
    return best[1], best[2]


def _tile_reduction_scalar(sch, name, params):
    return _tile_reduction(sch, name, params, vector=False)


def _pack_operand(sch, info, index, region, v):
    """Copy a read operand into a buffer whose last dimension is the one indexed by v."""
    d = _packable_dim(region, info.vars[v])
    if d is None:
        raise NotApplicable("operand not packable")
    size = math.prod(_size(s) for s in region.source.shape)
    if size * PACK_RATIO > info.work:
        raise NotApplicable("packing costs too much")
    packed = sch.cache_read(info.block, index, "global")
    ndim = len(region.region)
    if d != ndim - 1:
        sch.transform_layout(packed, ("write", 0),
                             lambda *idx: [idx[i] for i in range(ndim) if i != d] + [idx[d]])
    return packed


def _absorb_epilogues(sch, writeback):
    """Inline pointwise consumers (bias add, ReLU, ...) into the write-back block."""
    names = []
    progress = True
    while progress:
        progress = False
        for consumer in sch.get_consumers(writeback):
            stmt = sch.get(consumer)
            if _reduction_iters(stmt):
                continue
            try:
                sch.reverse_compute_inline(consumer)
            except Exception as err:  # noqa: BLE001 - TVM's own check: not an epilogue
                _probe(f"reverse_compute_inline of block {stmt.name_hint}", err)
                continue
            names.append(stmt.name_hint)
            progress = True
            break
    return names


def _vectorize_innermost(sch, block, lanes):
    """Vectorize a block's innermost non-unit loop (unit loops after it fused into it)."""
    loops = list(sch.get_loops(block))
    while len(loops) > 1 and _const(sch.get(loops[-1]).extent) == 1:
        loops.pop()
    if not loops:
        return
    ext = _const(sch.get(loops[-1]).extent)
    if not ext or not 2 <= ext <= 4 * lanes or int(sch.get(loops[-1]).kind) != 0:
        return
    tail = list(sch.get_loops(block))[len(loops):]
    if any(int(sch.get(lp).kind) != 0 for lp in tail):
        return
    sch.vectorize(sch.fuse(loops[-1], *tail) if tail else loops[-1])


def _index_divisors(stmt, variables):
    """{var index: d} for spatial variables used under floordiv/floormod by a constant d
    (gather-form gradients of strided windows). Splitting such an axis by d and unrolling
    the remainder turns those indices affine."""
    position = {v.name: k for k, v in enumerate(variables)}
    found = {}

    def visit(e):
        if isinstance(e, (tirx.FloorDiv, tirx.FloorMod)) and isinstance(e.b, tirx.IntImm):
            d = int(e.b.value)
            if d > 1:
                for x in tirx.analysis.undefined_vars(e.a):
                    if x.name in position:
                        k = position[x.name]
                        found[k] = math.lcm(found.get(k, 1), d)

    _walk_expr(stmt.body.value if isinstance(stmt.body, tirx.BufferStore) else stmt.body, visit)
    return found


def _gather_reduction(sch, name, params):
    """_plain_reduction, for blocks indexed through floordiv/floormod only."""
    info = _BlockInfo(sch, sch.get_sblock(name))
    if not _index_divisors(info.stmt, info.vars):
        raise NotApplicable("no strided-window gather")
    return _plain_reduction(sch, name, params)


def _plain_reduction(sch, name, params):
    """Reductions with no vectorizable output axis (pooling, gather-form gradients, row
    reductions): parallel outer spatial loops; axes indexed through floordiv/floormod split
    by the divisor; short inner loops unrolled."""
    block = sch.get_sblock(name)
    info = _BlockInfo(sch, block)
    if "O" in info.kinds:
        raise NotApplicable("opaque iterators")
    divisors = _split_divisors(info)
    outer, inner, red = _split_by_divisors(sch, info, divisors)
    if not outer:
        raise NotApplicable("no spatial loop")
    sch.reorder(*outer, *inner, *red)
    notes = []
    if divisors:
        notes.append("split " + "x".join(str(divisors[k]) for k in sorted(divisors)))
    body = math.prod(_unroll_extent(sch, lp) for lp in inner + red)
    if body <= UNROLL_MAX_BODY:
        for loop in inner + red:
            sch.unroll(loop)
        notes.append("unrolled")
    elif red and _unroll_extent(sch, red[-1]) <= 8:
        sch.unroll(red[-1])
        notes.append("unrolled")
    # Guarded loads (gather-form gradients) compile to branches inside parallel closures,
    # where LLVM loses the alias facts it uses to turn them into selects: a higher bar.
    if _parallel_worth_it(info, PLAIN_PARALLEL_PENALTY, params):
        outer, note = _parallelize(sch, outer, params)
        if note:
            notes.append(note)
    if not notes:
        raise NotApplicable("nothing to do")
    return f"plain[{', '.join(notes)}]", {name}


def _library_calls(stmt):
    """How many math library calls (exp, log, tanh, ...) one iteration of a block makes."""
    count = [0]

    def visit(e):
        if isinstance(e, tvm.ir.Call) and \
                str(getattr(e.op, "name", "")).rpartition(".")[2] in LIBRARY_CALLS:
            count[0] += 1

    if isinstance(stmt.body, tirx.BufferStore):
        _walk_expr(stmt.body.value, visit)
    return count[0]


def _has_if_then_else(stmt):
    found = [False]

    def visit(e):
        if isinstance(e, tvm.ir.Call) and str(getattr(e.op, "name", "")).endswith("if_then_else"):
            found[0] = True

    if isinstance(stmt.body, tirx.BufferStore):
        _walk_expr(stmt.body.value, visit)
    return found[0]


def _schedule_spatial(sch, block, params):
    """Fuse the contiguous trailing loops, vectorize them, parallelize the rest. A padding
    block is first split into a constant fill and an in-bounds copy (no per-element branch)."""
    name = sch.get(block).name_hint
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    if not loops or _reduction_iters(stmt):
        return ""
    # Only blocks still under their own loop nest at the root are ours to schedule.
    if any(int(sch.get(lp).kind) != int(tirx.ForKind.SERIAL) for lp in loops):
        return ""
    if _has_if_then_else(stmt):
        try:
            fill = sch.decompose_padding(block, loops[0])
        except Exception as err:  # noqa: BLE001 - TVM's own check: not a padding pattern
            _probe(f"decompose_padding of block {name}", err)
            fill = None
        if fill is not None:
            first = _schedule_spatial(sch, fill, params)
            second = _schedule_spatial(sch, block, params)
            return f"padding[fill {first or '-'}; copy {second or '-'}]"
    info = _BlockInfo(sch, block)
    divisors = _split_divisors(info)
    if divisors:
        return _schedule_spatial_split(sch, info, divisors, params)
    n = len(info.loops)
    lanes = params.lanes(info.dtype)
    start = n
    for t in range(n - 1, -1, -1):
        if t in info.symbolic:  # the vectors tile the static axes only (never predicated)
            break
        group = range(t, n)
        want = {k: math.prod(info.extents[k + 1:]) for k in group}
        if any(info.write_strides[k] != want[k] for k in group):
            break
        if not all(all(strides[k] == want[k] for k in group)
                   or all(strides[k] == 0 for k in group) for _, _, strides in info.reads):
            break
        start = t
    notes = []
    outer = list(info.loops)
    vec = None
    if start < n:
        fused = sch.fuse(*info.loops[start:]) if n - start > 1 else info.loops[start]
        extent = math.prod(info.extents[start:])
        rows = [math.prod(info.extents[k:]) for k in range(start + 1, n)]
        vec = _vector_factor(extent, lanes, max_registers=4, rows=rows)
        if vec is not None:
            o, i = sch.split(fused, factors=[None, vec])
            sch.vectorize(i)
            outer = list(info.loops[:start]) + [o]
            notes.append(f"v{vec}")
        else:
            outer = list(info.loops[:start]) + [fused]
    if outer and _parallel_worth_it(info, vec or 1, params):
        outer, note = _parallelize(sch, outer, params)
        if note:
            notes.append(note)
    if not notes:
        return ""
    return f"spatial[{', '.join(notes)}]"


def _split_divisors(info):
    """{axis: d} for the spatial axes a block reads through floordiv/floormod by d and that d
    tiles (a strided gradient's dilated copy, pooling's gather-form gradient)."""
    return {k: d for k, d in _index_divisors(info.stmt, info.vars).items()
            if info.kinds[k] == "S" and k not in info.symbolic and info.extents[k] % d == 0
            and info.extents[k] > d}


def _split_by_divisors(sch, info, divisors):
    """(outer, inner, reduction loops) of a block: each axis k of `divisors` split by its
    divisor into an outer and an inner loop; other spatial loops are outer."""
    outer, inner, red = [], [], []
    for k, loop in enumerate(info.loops):
        if info.kinds[k] == "R":
            red.append(loop)
        elif k in divisors:
            o, i = sch.split(loop, factors=[None, divisors[k]])
            outer.append(o)
            inner.append(i)
        else:
            outer.append(loop)
    return outer, inner, red


def _schedule_spatial_split(sch, info, divisors, params):
    """Axes read as v // d or v % d are split by d, the remainders unrolled innermost: every
    index becomes affine in the loops (no integer division per element)."""
    outer, inner, _ = _split_by_divisors(sch, info, divisors)
    sch.reorder(*outer, *inner)
    for loop in inner:
        sch.unroll(loop)
    notes = ["split " + "x".join(str(divisors[k]) for k in sorted(divisors)), "unrolled"]
    if _parallel_worth_it(info, 1, params):
        outer, note = _parallelize(sch, outer, params)
        if note:
            notes.append(note)
    return f"spatial[{', '.join(notes)}]"
