"""Entry points (default_cpu_schedule, schedule_prim_func) and the order in which rules are
tried on a kernel.

Rules, tried in this order (the first that applies wins), after the int8 dot-product rule
(int8.py), which takes only kernels holding ops.int8's packed GEMM, and the per-image rule
of a strided conv's d/dx (its phases and their interleave: conv_phases.py):

0. tvmfront's GEMV - a matrix times a vector with both read contiguously along the
   reduction (gemv.py);
1. ``dlight.cpu.GEMV`` - other matrix-vector kernels, unless its vector tile is wider than
   two SIMD registers (minutes of LLVM codegen: see ``_dlight_gemv``).
2. tvmfront's rule (_tvmfront_rule); for kernels without a multiply-accumulate, first in a
   mode that requires every reduction to get a register tile, then
3. ``dlight.cpu.Reduction`` (rows parallelized; large row reductions only), then
4. tvmfront's rule without that requirement.

tvmfront's rule goes block by block on copies of the schedule (a failing primitive falls
back to a simpler schedule, never to a failed build): spatial producers are inlined
(spatial.py), then each reduction gets the first of conv forward's per-image tiles on
AVX-512 (conv_forward.py), a same-size conv's d/dw summed image by image
(conv_weight_grad.py), the GEMM family's register tile (gemm.py), the strided-window
gather (reductions.py, conv.py), vector partial sums along contiguous reduction rows
(reductions.py's lane reduction), a scalar tile, a plain loop nest;
the spatial blocks left standing are scheduled last (spatial.py).

Reduction order is kept except by the GEMV rule and the lane reductions (rfactor): every
other output element is accumulated in the order of its reduction loops, so results equal the
naive build's up to LLVM's FMA contraction in fused pointwise chains (about 1e-7 relative);
lane reductions sum per-lane partial sums (BatchNorm's statistics: about 1e-6 relative).
"""

import math

from .._tvm import dlight, s_tir, tirx, tvm
from ..autodiff import MATERIALIZED
from .params import CpuParams, DLIGHT_REDUCTION_MIN_WORK, GEMV_MAX_VECTOR_REGISTERS, SMALL_WORK
from .failures import NotApplicable, _Kernel, _current, _failed, _probe, log
from .analysis import (_buffers, _children, _const, _has_contraction, _max_block_iterations,
                       _reduction_iters, _root_blocks, _walk_stmts, kernel_work, loop_kinds,
                       parallel_write_races)
# The rules below are looked up in their files at call time (gemm._tile_reduction, ...), so a
# test or bench that patches a rule in its file reaches every caller.
from . import conv_forward, conv_phases, conv_weight_grad, gemm, gemv, int8, spatial, window_reindex
from .deferred_writeback import defer_writebacks
from .predicates import likely_predicates
from .padded_terms import skip_padded_terms
from .spatial import _inline_spatial
from .reductions import (_column_reduction, _gather_reduction, _lane_reduction,
                         _plain_reduction, _row_fusion, _tile_reduction_scalar)

SCHEDULED_ATTR = "tirx.is_scheduled"
# Each kernel records the rule that scheduled it (visible in dump_ir's schedule stage).
RULE_ATTR = "tvmfront.schedule_rule"


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

    candidates = [("tvmfront.int8", lambda: int8._int8_gemm(func, target, params))]
    if contraction:  # GEMV is one
        candidates.append(("tvmfront.conv_phases",
                           lambda: conv_phases._conv_phases(func, params)))
        candidates.append(("tvmfront.gemv", lambda: gemv._gemv(func, params)))
        candidates.append(("dlight.cpu.GEMV", lambda: _dlight_gemv(func, target, params)))
    else:
        # Row reductions: tvmfront's register tiles when every reduction tiles, else
        # dlight's Reduction (it parallelizes rows: only for kernels large enough to gain).
        candidates.append(("tvmfront (tiled only)",
                           lambda: _tvmfront_rule(func, params, tiled_only=True)))
        if work is not None and work >= DLIGHT_REDUCTION_MIN_WORK:
            candidates.append(("dlight.cpu.Reduction",
                               lambda: _dlight(dlight.cpu.Reduction(), func, target)))
    candidates.append(("tvmfront", lambda: _tvmfront_rule(func, params)))
    for name, attempt in candidates:
        try:
            result = attempt()
            if result is not None:  # the sums whose padding a rule inlined (padded_terms.py)
                result = (skip_padded_terms(result[0]), result[1])
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
    # Parameters too: an opaque block (a te.extern scatter) lists no reads of its int64 ids.
    wide = sorted({buf.name for buf in [*_buffers(func), *_buffer_params(func)]
                   if str(buf.dtype) in ("int64", "uint64") and buf.name not in allocated})
    if wide:
        _failed("narrow indices to int32", NotApplicable(f"int64 data in {', '.join(wide)}"))
        return func
    try:
        return tirx.transform.ForceNarrowIndexToInt32()(tvm.IRModule({"main": func}))["main"]
    except Exception as err:  # noqa: BLE001 - keep the kernel as it is
        _failed("narrow indices to int32", err)
        return func


def _buffer_params(func):
    """A kernel's buffer parameters (TVM 0.27: buffer-typed vars; a buffer_map before)."""
    buffer_map = getattr(func, "buffer_map", None)
    params = [buffer_map[p] for p in func.params if p in buffer_map] if buffer_map is not None \
        else list(func.params)
    return [p for p in params if hasattr(p, "dtype") and hasattr(p, "shape")]


def _mark(func):
    return func.with_attr(SCHEDULED_ATTR, True)


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
        if not _reduction_iters(sch.get(block)) or name in done:  # done: by a kernel rule
            continue
        rules = (("row_fusion", _row_fusion),
                 ("conv_forward", conv_forward._conv_forward),
                 ("conv_weight_grad", conv_weight_grad._conv_weight_grad),
                 ("padded_weight_grad", conv_weight_grad._padded_weight_grad),
                 ("window_reindex", window_reindex._window_reindex),
                 ("column_reduction", _column_reduction),
                 ("tile_reduction", gemm._tile_reduction),
                 ("gather_reduction", _gather_reduction),
                 ("lane_reduction", _lane_reduction),
                 ("tile_reduction_scalar", _tile_reduction_scalar),
                 ("plain_reduction", _plain_reduction))
        if len({str(w.source.dtype) for w in sch.get(block).writes}) > 1:
            # A max and its position (a derived max's first_extremum): the scalar rules only,
            # the vector ones being built for outputs of one dtype (the gather rule, missing
            # the guard inside such a body, once computed wrong positions for padded
            # windows: tests/test_derived_max_schedule.py).
            rules = rules[-2:]
        for rule, strategy in rules:
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
    nested = []
    if len(_root_blocks(sch)) > 1:  # most kernels are one block by now: no copy, no analysis
        trial = sch.copy()
        try:
            nested = spatial._nest_pointwise_outputs(trial)
        except Exception as err:  # noqa: BLE001 - each output keeps a loop nest of its own
            _failed("nest_pointwise_outputs", err)
    if nested:
        sch = trial
        done.update(nested)
        notes.append(f"{'+'.join(nested)}=nested")
    # Copies the schedules keep (autodiff.MATERIALIZED) last: their reader may place them
    # per plane first (conv._extensions_per_plane); those left get their own loops then.
    blocks = _root_blocks(sch)
    for block in sorted(blocks, key=lambda b: MATERIALIZED in sch.get(b).annotations):
        name = sch.get(block).name_hint
        if name in done:
            continue
        trial = sch.copy()
        try:
            note = spatial._schedule_spatial(trial, block, params)  # names may repeat (pad_einsum)
        except Exception as err:  # noqa: BLE001 - the block keeps its plain loops
            _failed(f"schedule_spatial on block {name}", err)
            continue
        sch = trial
        if note:
            notes.append(f"{name}={note}")
    new = defer_writebacks(likely_predicates(sch.mod["main"]))
    if not loop_kinds(new) & {"parallel", "vectorized"} and \
            (kernel_work(new, symbolic=True) or 0) >= SMALL_WORK:
        notes.append("no parallel/vector loop")
    return new, ", ".join(notes)


def _dlight_gemv(func, target, params):
    """dlight's GEMV, unless it vectorizes a tile of more than GEMV_MAX_VECTOR_REGISTERS.

    dlight's GEMV vectorizes a 64- or 128-lane tile of the output axis, along which the weight
    is strided (so every lane is a gather), and unrolls up to 256 reduction steps of it. Where
    the tile divides the output, LLVM gets that whole gathered, unrolled code: the MLP's
    64->256 and 256->256 Linear layers at batch 1 took ~170 s and ~15 s of LLVM codegen and ran
    slower than tvmfront's rule (6.6 vs 3.3 us, 21.8 vs 12.5 us; that rule builds each in 0.02
    s). Where the tile leaves a remainder of the outputs (a block predicated on the vectorized
    loop: LeNet's 120, 84 and 10 outputs) the loop is not really vectorized: it builds in
    under 0.2 s and beats tvmfront's rule. A predicate on the reduction alone does not."""
    try:
        result = _dlight(dlight.cpu.GEMV(), func, target)
    except AssertionError as err:
        # dlight's normalize asserts the shapes it handles where its matcher let the kernel
        # through (a bare AssertionError): a product over one term (attention's scores @ v
        # at sequence length 1) or over several blocks (a derived BatchNorm's coefficient
        # gradients, fake_quant's scale gradients). The rule does not apply, and the next
        # takes the kernel, without the warning "dlight.cpu.GEMV failed, falling back"
        _probe("dlight.cpu.GEMV", err)
        return None
    if result is None:
        return None
    limit = GEMV_MAX_VECTOR_REGISTERS * params.lanes("float32")
    wide = []

    def visit(node, vectorized=None):
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.VECTORIZED:
            ext = _const(node.extent)
            vectorized = (ext, node.loop_var) if ext is not None and ext > limit else None
        elif vectorized and type(node).__name__ in ("SBlockRealize", "BlockRealize"):
            # unpredicated, or predicated on the reduction only (its steps padded to the
            # tile: a 24 -> 128 Linear at batch 1 sums 24 terms in 64 steps): all 128 lanes
            # are gathers, and LLVM's codegen of that kernel ran for over 5 minutes
            predicate, (extent, lane) = node.predicate, vectorized
            if isinstance(predicate, tirx.IntImm):
                gathered = bool(predicate.value)
            else:
                gathered = lane.name not in {v.name for v in
                                             tirx.analysis.undefined_vars(predicate)}
            if gathered:
                wide.append(extent)
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
    races = parallel_write_races(new)
    if races:  # refused: a race, and the block's whole work repeated in every iteration
        log.debug("kernel %s: %s writes %s from every parallel iteration: refused",
                  _current.get().name, type(rule).__name__, ", ".join(races))
        return None
    return new, ""
