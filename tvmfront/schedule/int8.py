"""The int8 GEMM rule: the reduction of ops.int8's packed kernels (qdense_packed,
qconv2d_packed: a block annotated GEMM_ATTR) tensorized with the CPU's 8-bit dot product.

One step reads 4 activation bytes (u8, broadcast), 16 x 4 weight bytes (s8, one contiguous
load from the packed weight) and adds the 16 four-byte dot products into 16 int32 lanes:

- AVX-512 VNNI: one ``vpdpbusd`` (exact);
- AVX2: per 8 lanes ``vpmaddubsw`` (u8 x s8 pairs summed to int16, *saturating*) then
  ``vpmaddwd`` by ones (pairs to int32). Exact only when 2 * x_max * 128 <= 32767, i.e.
  activations in [0, 127] (PyTorch's reduce_range on x86): the kernel's annotation carries
  x_max, and above 127 the rule does not apply (the generic rules widen to int16, vpmaddwd).
- aarch64 with the dot-product extension (ARMv8.2 dotprod; target "aarch64:dotprod"): per 4
  lanes one ``sdot`` (s8 x s8 to int32, exact). Its activations are signed bytes, so they
  must lie in [0, 127] as on AVX2 (an unsigned byte up to 127 is the same int8).

Tile: rows x 16 output channels of accumulators (_row_choices: up to 16 rows with AVX-512's
32 registers, else 4; a convolution's rows along Wo or over whole image rows), the reduction 4
bytes at a time inside, the requantizing epilogue (and the elementwise ops fused after it)
computed under the same tile from the registers.

Pixel lanes (ops.int8.qconv2d_pixels, a block annotated PIXELS_ATTR: few output channels
or taps): the same instructions with the operands' roles turned, 16 (8, 4) output pixels of a
row as the lanes and one channel's 4 weight bytes broadcast; per image the input quantized,
padded and laid out as quads first, then tiles of (pool) rows x a chunk of channels x whole
vectors of pixels in registers, the epilogue (max-pool, requantization) in the tile.

A kernel may hold several of these (ops.int8.qchain: a run of layers in one kernel).

Where the pattern or a primitive refuses, the rule raises and dispatch falls back (logged) to
the generic rules, which compute the same integers.
"""

import numpy as np

from .._tvm import arith, llvm_has_features, s_tir, tirx, tvm
from ..ops.int8 import (GEMM_ATTR, GEMM_STEPS, GROUP, LANES, PIXELS_ATTR, PIXELS_POOL, QUADS,
                        QUANTIZED, WINDOWS)
from .analysis import _const, _root_blocks, _walk_stmts
from .failures import NotApplicable, _current, _probe, log
from .tile_reads import analyzer_for, reads_stay_in_tile
from . import spatial

ROWS = 4  # accumulator rows per tile: 4 x 16 int32 = 8 ymm / 4 zmm registers
# AVX-512 (32 zmm): up to 16 rows, one zmm each. Along a convolution's Wo the rows are also
# the epilogue's vector (NCHW: pixels contiguous), 4 rows only xmm-wide: its per-element work
# then cost as much as the GEMM's (ResNet 16->16 3x3 convs).
WIDE_ROWS = (16, 8)
PARALLEL_MIN_MACS = 1 << 19  # below this a parallel launch costs more than it saves
_ATTRS = {GEMM_ATTR, PIXELS_ATTR}  # the blocks this rule schedules
_PAD = "qconv2d_pad"  # a convolution's padded input ("qconv2d_pad_1": a qchain's next layer)
_registered = set()


def _intrinsics():
    """{name: (lanes per call, impl)}: C[L] int32 += sum_k<4 A[k] (u8) * B[L, k] (s8). (TVM
    0.27's own VNNI_DOT_16x4_INTRIN passes <16 x i32> operands to vpdpbusd.512, which its
    LLVM declares on <64 x i8>: module verification fails. These pass bytes.)"""
    T = tvm.script.tirx

    def call(name, *args, dtype):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)

    def avx2(c, a, b):  # u8 x s8 pairs to int16 (saturating), then pairs to int32
        pairs = call("llvm.x86.avx2.pmadd.ub.sw", a, b, dtype="int16x16")
        return c + call("llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), 16),
                        dtype="int32x8")

    def vnni(c, a, b):
        return call("llvm.x86.avx512.vpdpbusd.512", c, a, b, dtype="int32x16")

    def sdot(c, a, b):  # signed x signed: activations <= 127 read the same as int8
        return call("llvm.aarch64.neon.sdot.v4i32.v16i8", c, a, b, dtype="int32x4")

    return {"tvmfront_dot_8x4_avx2": (8, avx2), "tvmfront_dot_16x4_vnni": (16, vnni),
            "tvmfront_dot_4x4_sdot": (4, sdot)}


def _register(name, scope, a_scope="global"):
    """Register intrinsic `name` on an accumulator buffer of `scope` ("local": the tile held
    in registers; "global": the whole accumulator) and activations in `a_scope` ("local": a
    convolution's windows gathered per tile), as f"{name}_{scope}_{a_scope}"."""
    full = f"{name}_{scope}_{a_scope}"
    if full in _registered:
        return full
    T = tvm.script.tirx
    lanes, dot = _intrinsics()[name]

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((GROUP,), "uint8", offset_factor=1, scope=a_scope),
             B: T.Buffer((lanes, GROUP), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:GROUP], B[0:lanes, 0:GROUP])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, GROUP):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((GROUP,), "uint8", offset_factor=1, scope=a_scope),
             B: T.Buffer((lanes, GROUP), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:GROUP], B[0:lanes, 0:GROUP])
            T.writes(C[0:lanes])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"),
                                          lanes), dtype=f"uint8x{GROUP * lanes}")
            C[T.ramp(T.int32(0), 1, lanes)] = dot(C.vload([0], dtype=f"int32x{lanes}"), a,
                                                  B.vload([0, 0], dtype=f"int8x{GROUP * lanes}"))

    s_tir.TensorIntrin.register(full, desc, impl, override=True)
    _registered.add(full)
    return full


def dot_intrinsic(target, x_max):
    """(intrinsic name, lanes) for `target` on activations <= x_max; NotApplicable if none."""
    if llvm_has_features(target, "avx512vnni", "avx512bw"):
        return "tvmfront_dot_16x4_vnni", 16
    if llvm_has_features(target, "avx2"):
        if x_max > 127:
            raise NotApplicable(f"AVX2's vpmaddubsw saturates on activations up to {x_max} "
                                "(needs <= 127: quantize with reduce_range)")
        return "tvmfront_dot_8x4_avx2", 8
    if llvm_has_features(target, "dotprod"):
        if x_max > 127:
            raise NotApplicable(f"aarch64's sdot multiplies signed bytes: activations up to "
                                f"{x_max} (needs <= 127: quantize with reduce_range)")
        return "tvmfront_dot_4x4_sdot", 4
    raise NotApplicable("no 8-bit dot-product instruction known for this target")


def _int8_gemm(func, target, params):
    """(scheduled func, note), or None when the kernel has no annotated int8 GEMM block."""
    found = []
    _walk_stmts(func.body, lambda n: found.append(1) if _ATTRS & set(
        getattr(n, "annotations", None) or {}) else None)
    if not found:  # every other kernel: no Schedule built for nothing
        return None
    sch = s_tir.Schedule(func)
    gemms = [sch.get(b).name_hint for b in _root_blocks(sch)
             if _ATTRS & set(sch.get(b).annotations)]
    if not gemms:
        return None
    notes = []
    # The GEMMs last first: a tiled epilogue before a GEMM that reads it (qchain) made the
    # reading GEMM's reverse_compute_at refuse (root no longer a stage pipeline); the pixel
    # convolutions before all (they refused after any other was tiled).
    pixels = [n for n in gemms if PIXELS_ATTR in sch.get(sch.get_sblock(n)).annotations]
    for name in pixels + [n for n in reversed(gemms) if n not in pixels]:
        annotations = sch.get(sch.get_sblock(name)).annotations
        x_max = int(annotations.get(GEMM_ATTR, annotations.get(PIXELS_ATTR)))
        try:
            intrin, lanes = dot_intrinsic(target, x_max)
        except NotApplicable as err:
            log.info("kernel %s: int8 dot product not used (%s)", _current.get().name, err)
            raise
        if PIXELS_ATTR in annotations:
            try:  # its epilogue inlined into the next layer's stages: no pass of its own
                sch, note = _int8_pixels(sch.copy(), name, target, params)
            except NotApplicable:
                raise
            except Exception as err:  # noqa: BLE001 - e.g. a pooled epilogue inlined into a
                # padding reads the accumulator at (i - 1) * 2: no region reverse_compute_at
                # can place (a padded conv after a pooled one). Then the stages stay apart.
                _probe(f"int8 pixels on block {name} with the next layer's stages inlined", err)
                sch, note = _int8_pixels(sch, name, target, params, into_stages=False)
            sch = s_tir.Schedule(sch.mod["main"])  # as below: a tensorized block's schedule
            notes.append(f"{name}={note}")
            continue
        sch = _inline_epilogue(sch, name)
        last = None
        for rows, span in _row_choices(lanes):
            trial = sch.copy()
            try:
                trial, note = _tile(trial, name, rows, intrin, lanes, params, span)
            except Exception as err:  # noqa: BLE001 - fewer rows, else dispatch's fallback
                last = err
                _probe(f"int8 GEMM tile of {rows} rows over {span or 'all'} row axes on "
                       f"block {name}", err)
                continue
            # a fresh schedule: copy() of one holding a tensorized block fails in 0.27
            sch = s_tir.Schedule(trial.mod["main"])
            notes.append(f"{name}={note}")
            break
        else:
            raise last
    for block in _root_blocks(sch):  # producers (quantize, windows), a separate epilogue
        trial = sch.copy()
        try:
            note = spatial._schedule_spatial(trial, trial.get_sblock(sch.get(block).name_hint),
                                             params)
        except Exception as err:  # noqa: BLE001 - keeps its plain loops
            _probe(f"schedule_spatial on block {sch.get(block).name_hint}", err)
            continue
        sch = trial
        if note:
            notes.append(f"{sch.get(block).name_hint}={note}")
    return sch.mod["main"], ", ".join(notes)


def _inline_epilogue(sch, name, into_stages=True):
    """The elementwise blocks Relax fused after the GEMM's epilogue (ReLU, a residual add,
    the next layer's quantize) inlined into one block that reads the accumulator, which
    _tile then computes in the tile: without it each one is a pass over a float tensor
    (dequantize, add, ReLU, quantize: 4 passes, ResNet's convolutions ~1.3x slower).
    into_stages False: not into the next layer's padding or quads (qchain) either."""
    while True:
        consumers = sch.get_consumers(sch.get_sblock(name))
        if len(consumers) != 1 or not sch.get_consumers(consumers[0]):
            return sch  # none, or the one left writes the kernel's output
        if any(_ATTRS & set(sch.get(c).annotations)
               or not into_stages and sch.get(c).name_hint.startswith((QUADS, _PAD))
               for c in sch.get_consumers(consumers[0])):
            return sch  # it feeds the next layer's GEMM (qchain): stays its input
        trial = sch.copy()
        try:
            trial.compute_inline(consumers[0])
        except Exception as err:  # noqa: BLE001 - the rest stay their own loop nests
            _probe(f"compute_inline of {name}'s epilogue", err)
            return sch
        sch = trial


def _row_choices(lanes):
    """(rows, span) tiles to try, best first: `rows` rows along the last `span` row axes
    fused (0: all). AVX-512's 16-lane intrinsic (32 zmm): 16 or 8 rows along a convolution's
    Wo, else along (Ho, Wo) (small images: LeNet's 4x4, ResNet's 8x8); else ROWS."""
    wide = WIDE_ROWS if lanes == 16 else ()
    return [*((r, span) for r in wide for span in (1, 2)), (ROWS, 1), (ROWS, 0), (1, 1)]


def _tile(sch, name, rows, intrin, lanes, params, span=1):
    """Tile the GEMM block `name`: `rows` rows x LANES channels, tensorized. `span` 1: the
    rows along the last row axis (dense's one; a convolution's Wo, which `rows` divides);
    2: whole image rows (a convolution's Wo divides `rows`, Ho split); 0: along all row axes
    fused. Spans 1 and 2 tile an (n, i.., j..) box of a convolution's NCHW output that TVM
    bounds exactly, so that the epilogue reads the tile at constant offsets, in registers;
    span 0 bounds it loosely: the tile stays in memory (a store and reload per step)."""
    block = sch.get_sblock(name)
    loops = sch.get_loops(block)
    if len(loops) < 3:
        raise NotApplicable(f"expected loops (rows..., channel, k), got {len(loops)}")
    *axes, j, k = loops
    steps = [int(v) for v in sch.get(block).annotations.get(GEMM_STEPS, ())]
    jo, ji = sch.split(j, [None, LANES])
    ko, ki = sch.split(k, [None, GROUP])
    k_steps = _const(sch.get(ko).extent) or 0
    if span == 2:  # whole rows of the image: Ho split, Wo inside the tile
        wo = _const(sch.get(axes[-1]).extent) if len(axes) > 1 else None
        if wo is None or rows % wo or (_const(sch.get(axes[-2]).extent) or 1) % (rows // wo):
            raise NotApplicable(f"{rows} rows are not whole image rows of {wo} pixels")
        ho, hi = sch.split(axes[-2], [None, rows // wo])
        outer, inner = [*axes[:-2], ho], [hi, axes[-1]]
    else:
        i = sch.fuse(*axes) if span == 0 and len(axes) > 1 else axes[-1]
        extent = _const(sch.get(i).extent)
        if rows > 1 and (extent is None or extent % rows):
            raise NotApplicable(f"{extent} rows are not a multiple of {rows}")
        io, ii = sch.split(i, [None, rows])
        outer, inner = [*(axes[:-1] if span else []), io], [ii]
    jh, jl = sch.split(ji, [None, lanes])
    sch.reorder(*outer, jo, ko, *inner, jh, jl, ki)
    tiles = [_const(sch.get(lp).extent) for lp in (*outer, jo)]
    macs = (0 if None in tiles else int(np.prod(tiles))) * k_steps
    parallel = macs * rows * LANES * GROUP >= PARALLEL_MIN_MACS and params.cores > 1
    chunks, tile = _tile_loops(sch, [*outer, jo], parallel)
    if steps:  # a direct convolution: steps along (channel, kh, row): no division by kh
        # (serial: unrolled, the 3 steps' tiles of a 3x3 spill the 16 ymm registers)
        sch.split(ko, [None, *steps])
    if parallel:  # first: parallel checks the dataflow of the bare reduction
        sch.parallel(chunks)
    epilogue = ""
    consumers = sch.get_consumers(block)
    if len(consumers) == 1:
        trial = sch.copy()
        try:  # the epilogue reads the tile while it is in registers (dense: affine index)
            _epilogue_at_tile(trial, name, trial.get_sblock(sch.get(consumers[0]).name_hint),
                              tile)
            trial.set_scope(trial.get_sblock(name), 0, "local")  # the tile, in registers
            sch, epilogue = trial, ", epilogue in tile"
        except Exception as err:  # noqa: BLE001 - the epilogue stays its own loop nest
            _probe(f"reverse_compute_at of {name}'s epilogue", err)
        consumers = sch.get_consumers(sch.get_sblock(name))
        block = sch.get_sblock(name)
    a_scope = "global"
    for producer in sch.get_producers(block):  # a convolution's windows: gathered per tile
        if not sch.get(producer).name_hint.endswith(WINDOWS):
            continue  # (a padded input read in place: padded once, not per tile)
        trial = sch.copy()
        try:
            trial.compute_at(producer, tile)
            trial.set_scope(producer, 0, "local")
            # constant taps: loads at fixed offsets. Only the producer's own loops, under the
            # tile: where it has one, [-2:] took the tile's loop too, and a 5000-tile loop
            # unrolled took LLVM 150 s (a 1x1 conv of 64 channels at 21x21 padded by 2)
            loops = trial.get_loops(producer)
            for lp in loops[_position(trial, loops, tile) + 1:][-2:]:
                _unroll(trial, lp)
            sch, a_scope = trial, "local"
        except Exception as err:  # noqa: BLE001 - gathered whole, before the GEMM
            _probe(f"compute_at of {name}'s operand", err)
    block = sch.get_sblock(name)
    sch.unannotate(block, GEMM_ATTR)  # the intrinsic's pattern has no annotation
    loops = sch.get_loops(block)
    init = sch.decompose_reduction(block, loops[_position(sch, loops, tile) + 1])
    # Unrolled rows and halves: constant offsets into the tile, which LLVM then keeps in
    # registers (serial loops left it in memory: a store and reload per dot-product step).
    *init_rows, init_lanes = sch.get_loops(init)[-len(inner) - 2:]
    sch.vectorize(init_lanes)
    for lp in (*init_rows, *sch.get_loops(block)[-len(inner) - 3:-2]):  # rows, halves
        _unroll(sch, lp)
    if epilogue:
        sch, along = _vectorize_epilogue(sch, consumers[0], tile, image_rows=len(inner) == 2,
                                         channels_first=len(axes) > 1)
        epilogue += along
    sch.tensorize(sch.get_loops(block)[-2], _register(intrin, "local" if epilogue else "global",
                                                         a_scope))
    return sch, (f"{intrin}[{rows}x{LANES}x{GROUP}{epilogue}"
                 f"{', parallel' if parallel else ''}]")


PARALLEL_CHUNKS = 64  # parallel tasks of a tiled GEMM: enough to balance 16 cores


def _tile_loops(sch, loops, parallel):
    """(parallel loop or None, tile loop): the loops over tiles fused into one, or where
    `parallel`, into the chunks (the leading loops, fused, up to PARALLEL_CHUNKS or more
    iterations) and the serial tiles of a chunk (the rest). TVM allocates a tile's 1 KiB
    accumulator (16 x 16 int32: not under its 1 KiB stack limit) with
    TVMBackendAllocWorkspace once per iteration of the parallel loop around it: per tile
    when the tiles were the parallel loop (7.5 % of the ResNet's int8 time went to the
    workspace pool), per chunk now. (Split after fusing, the tile's bindings no longer
    blockized for tensorize.)"""
    if not parallel or len(loops) < 2:
        return None, sch.fuse(*loops) if len(loops) > 1 else loops[0]
    count, lead = 1, 0
    while lead < len(loops) - 1 and count < PARALLEL_CHUNKS:
        count *= _const(sch.get(loops[lead]).extent) or PARALLEL_CHUNKS
        lead += 1
    fuse = lambda group: sch.fuse(*group) if len(group) > 1 else group[0]  # noqa: E731
    return fuse(loops[:lead]), fuse(loops[lead:])


def _epilogue_at_tile(sch, name, epilogue, tile):
    """The epilogue block (the accumulator `name`'s one consumer) computed under the loop
    `tile`, in place, where it then reads the tile from registers; NotApplicable (the
    schedule left half-changed: work on a copy) unless that is exact. A consumer that is the
    next layer's padding (a qchain) has its border split off first, filled once outside the
    tiles: moved whole, it ran only over the border's inside (reverse_compute_at places what
    the tile's values reach) and the border stayed unwritten."""
    if sch.get(epilogue).name_hint.startswith(_PAD):
        _split_padding(sch, sch.get(epilogue).name_hint, at=0)
    domain = _iterations(sch, sch.get_loops(epilogue))
    sch.reverse_compute_at(epilogue, tile)
    _epilogue_covers_tile(sch, name, epilogue, tile, domain)


def _epilogue_covers_tile(sch, name, epilogue, tile, domain):
    """Raise NotApplicable unless the epilogue computed at `tile` reads nothing of the
    accumulator `name` outside the tile (which then lives in registers, one tile at a time)
    and, over all tiles, computes its whole `domain` (its iteration count before the move).
    Refused, each a wrong answer before:
    - a flat output [N, C * H * W] (a Flatten after the conv) is no box of the tile's
      (n, i, j, channel) ranges: TVM bounds it by the interval from its first element to its
      last (120 of 288 outputs wrong, 1x1 conv of 32 channels on a 3x3 image);
    - a max-pool epilogue whose windows straddle tiles (a 1-pixel tile, 7x7 image: 147 of 288
      pooled outputs wrong);
    - an epilogue that writes more than the tiles reach (the next layer's padded input with
      its border in the same block: 896 of 2048 outputs wrong)."""
    if not reads_stay_in_tile(sch, name, epilogue, tile):
        raise NotApplicable("the epilogue at the tile reads accumulators outside it")
    computed = _iterations(sch, sch.get_loops(epilogue))
    if not analyzer_for(computed, domain).can_prove(computed >= domain):
        raise NotApplicable(f"the epilogue at the tiles would compute {computed} of its "
                            f"{domain} elements")


def _iterations(sch, loops):
    """The product of the loops' extents (symbolic where one is)."""
    total = tirx.IntImm("int64", 1)
    for lp in loops:
        total = total * tirx.Cast("int64", sch.get(lp).extent)
    return arith.Analyzer().simplify(total)


def _position(sch, loops, loop):
    """The index of `loop` among `loops` (LoopRVs of one schedule)."""
    return [sch.get(lp).same_as(sch.get(loop)) for lp in loops].index(True)


def _vectorize_epilogue(sch, block, tile, image_rows=False, channels_first=False):
    """The epilogue's tile vectorized: (the schedule, " by channels" where along them, else
    ""). `channels_first` (a convolution's NCHW
    output, its channel loop first under `tile`): along the channels, the tile's own layout
    (one register of 16 channels per row), the rest unrolled; else (or where that refuses)
    along its inner loop (the output's contiguous axis: channels for dense, pixels of a row
    for a convolution; `image_rows`: the tile's whole rows of an image, fused into one
    vector), the outer unrolled."""
    if channels_first:
        trial = _vectorize_channels(sch, block, tile)
        if trial is not None:
            return trial, " by channels"
    trial = sch.copy()
    try:
        if image_rows:
            trial.fuse(*trial.get_loops(block)[-2:])
    except Exception as err:  # noqa: BLE001 - one image row per vector
        _probe("fuse the int8 epilogue's image rows", err)
        trial = sch.copy()
    sch = trial
    loops = sch.get_loops(block)
    # the loops under the tile: one where the other's extent is 1 (a Linear of width 1)
    *outer, inner = loops[_position(sch, loops, tile) + 1:][-2:] or [None]
    if inner is None:
        return sch, ""
    trial = sch.copy()
    try:
        if _const(trial.get(inner).extent) is None:
            raise NotApplicable("a symbolic tile")
        trial.vectorize(inner)
        for lp in outer:
            _unroll(trial, lp)
        return trial, ""
    except Exception as err:  # noqa: BLE001 - scalar, unrolled
        _probe("vectorize the int8 epilogue", err)
        for lp in (*outer, inner):
            _unroll(sch, lp)
        return sch, ""


def _vectorize_channels(sch, block, tile):
    """A convolution's epilogue under `tile` with its channel loop (the first under the
    tile) moved innermost and vectorized, the pixel loops unrolled: every step reads one
    accumulator register of 16 channels as it is and writes the NCHW output channel by
    channel (byte or float stores). Along the pixels instead, each vector is a column of the
    tile: LLVM gathered it from the stack (16 vpgatherdd per tile), which cost the
    ResNet's int8 convolutions a tenth to a quarter of their time. None where it refuses,
    or where the strided channels cost more (_strided_channels_cost)."""
    if _strided_channels_cost(sch.get(block)):
        return None
    trial = sch.copy()
    try:
        loops = trial.get_loops(block)
        under = loops[_position(trial, loops, tile) + 1:]
        if len(under) < 2 or _const(trial.get(under[0]).extent) != LANES:
            raise NotApplicable(f"no channel loop of {LANES} first under the tile")
        trial.reorder(*under[1:], under[0])
        trial.vectorize(under[0])
        for lp in under[1:]:
            _unroll(trial, lp)
        return trial
    except Exception as err:  # noqa: BLE001 - vectorized along the pixels instead
        _probe("vectorize the int8 epilogue along the channels", err)
        return None


L1_ALIAS_BYTES = 2048  # channel planes a multiple of this apart share at most 2 L1 sets


def _strided_channels_cost(stmt):
    """Whether the epilogue block `stmt`, vectorized along the channels, would pay for
    NCHW's strided channels more than it saves: it reads an NCHW tensor (a residual: 16
    strided loads per vector, gathered), or writes one whose channel planes lie a multiple
    of L1_ALIAS_BYTES apart (a pixel's 16 channels then fall in one or two sets of an
    8-way L1 and evict each other). Measured on the ResNet at batch 64 (kernels alone, 1
    thread): its conv-add-ReLU kernels 1.1-1.6x slower along the channels, the others
    1.1-1.3x faster."""
    for region in stmt.reads:
        if len(region.source.shape) == 4 and region.source.scope() == "global":
            return True
    for region in stmt.writes:
        buffer = region.source
        shape = [_const(d) for d in buffer.shape]
        if len(shape) != 4 or None in shape:
            continue
        if shape[2] * shape[3] * tvm.DataType(buffer.dtype).bits // 8 % L1_ALIAS_BYTES == 0:
            return True
    return False


def _unroll(sch, loop):
    """Unroll `loop` where its extent is constant (unrolling a symbolic one fails at build)."""
    if _const(sch.get(loop).extent) is not None:
        sch.unroll(loop)


# ---- qconv2d_pixels: output pixels as lanes ---------------------------------------------------
PIXEL_REGISTERS = {16: 24, 8: 12, 4: 24}  # accumulator registers per tile, by lanes (32 zmm,
# 16 ymm, 32 q: the rest hold the operand row and the broadcast weights)


def _register_pixels(name, scope, a_scope):
    """Register intrinsic `name` with the roles of its operands turned: C[L] int32 +=
    sum_k<4 A[L, k] (u8, L pixels' 4 taps, contiguous) * B[k] (s8, one channel's 4 weights,
    broadcast), as f"{name}_pixels_{scope}_{a_scope}"."""
    full = f"{name}_pixels_{scope}_{a_scope}"
    if full in _registered:
        return full
    T = tvm.script.tirx
    lanes, dot = _intrinsics()[name]

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((lanes, GROUP), "uint8", offset_factor=1, scope=a_scope),
             B: T.Buffer((GROUP,), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes, 0:GROUP], B[0:GROUP])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, GROUP):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vi, vk], "int32") * T.cast(B[vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((lanes, GROUP), "uint8", offset_factor=1, scope=a_scope),
             B: T.Buffer((GROUP,), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes, 0:GROUP], B[0:GROUP])
            T.writes(C[0:lanes])
            b = T.reinterpret(T.broadcast(T.reinterpret(B.vload([0], "int8x4"), dtype="int32"),
                                          lanes), dtype=f"int8x{GROUP * lanes}")
            C[T.ramp(T.int32(0), 1, lanes)] = dot(C.vload([0], dtype=f"int32x{lanes}"),
                                                  A.vload([0, 0], dtype=f"uint8x{GROUP * lanes}"),
                                                  b)

    s_tir.TensorIntrin.register(full, desc, impl, override=True)
    _registered.add(full)
    return full


def _largest_divisor(n, limit):
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def _int8_pixels(sch, name, target, params, into_stages=True):
    """Schedule qconv2d_pixels' block `name`: per image, the quantized padded input and its
    quads computed first (in the image's loop); then tiles of `pool` output rows x a chunk of
    channels x whole vectors of pixels, held in registers, the reduction (channel, kh, groups
    of 4 taps) outside, tensorized along the pixels with the weights' 4 bytes broadcast; the
    epilogue (pooling, requantization, fused elementwise ops) in the tile. (schedule, note).
    into_stages: as _inline_epilogue's."""
    block = sch.get_sblock(name)
    stmt = sch.get(block)
    x_max, pool = int(stmt.annotations[PIXELS_ATTR]), int(stmt.annotations[PIXELS_POOL])
    intrin, lanes = dot_intrinsic(target, x_max)
    sch = _inline_epilogue(sch, name, into_stages)
    block = sch.get_sblock(name)
    loops = sch.get_loops(block)
    if len(loops) != 8:
        raise NotApplicable(f"expected loops (n, o, i, j, c, kh, g, t), got {len(loops)}")
    a, o, i, j, rc, rh, rg, rt = loops
    n_o, ho, wo = (_const(sch.get(lp).extent) for lp in (o, i, j))
    if None in (n_o, ho, wo) or wo % lanes or ho % pool:
        raise NotApplicable(f"{wo} pixels per row are not whole vectors of {lanes}, or {ho} "
                            f"rows not whole pooling windows of {pool}")
    budget = PIXEL_REGISTERS[lanes]
    vectors = _largest_divisor(wo // lanes, budget // pool)
    chunk = _largest_divisor(n_o, budget // (pool * vectors))
    io, ii = sch.split(i, [None, pool])
    oo, oi = sch.split(o, [None, chunk])
    jo, jm, jl = sch.split(j, [None, vectors, lanes])
    sch.reorder(a, io, oo, jo, rc, rh, rg, ii, oi, jm, jl, rt)
    tile = sch.fuse(io, oo, jo)
    macs = int(np.prod([_const(sch.get(lp).extent) or 1 for lp in sch.get_loops(block)]))
    parallel = macs >= PARALLEL_MIN_MACS and params.cores > 1 and (_const(sch.get(a).extent)
                                                                   or 1) > 1
    consumers = sch.get_consumers(block)
    if len(consumers) != 1:
        raise NotApplicable(f"{len(consumers)} consumers of the accumulator")
    epilogue = sch.get(consumers[0]).name_hint
    _epilogue_at_tile(sch, name, consumers[0], tile)
    sch.set_scope(block, 0, "local")
    quads, pad, quantized = _own_stages(sch, name)
    for producer in (quads, pad, quantized):  # per image, before its tiles
        if producer:
            sch.compute_at(sch.get_sblock(producer), a)
    fill = _split_padding(sch, pad)
    for producer in (quads, pad, *fill):
        sch = _vectorize_last(sch, producer)
    if quantized:  # one loop over the image's pixels, for LLVM to vectorize
        sch.fuse(*sch.get_loops(sch.get_sblock(quantized))[1:])
    sch.set_scope(sch.get_sblock(quads), 0, "local")
    if parallel:
        sch.parallel(a)
    sch.unannotate(block, PIXELS_ATTR)
    sch.unannotate(block, PIXELS_POOL)
    init = sch.decompose_reduction(block, rc)
    for lp in sch.get_loops(init)[-4:-1]:  # rows, channels, vectors: registers
        _unroll(sch, lp)
    sch.vectorize(sch.get_loops(init)[-1])
    for lp in (rh, rg, ii, oi, jm):  # constant offsets into the tile and the quads
        _unroll(sch, lp)
    sch = _vectorize_last(sch, epilogue, unroll_from=2)  # under (image, tile)
    sch.tensorize(jl, _register_pixels(intrin, "local", "local"))
    return sch, (f"{intrin}[pixels {pool}x{chunk}x{vectors * lanes}"
                 f"{', pool ' + str(pool) if pool > 1 else ''}"
                 f"{', parallel' if parallel else ''}]")


def _own_stages(sch, name):
    """[quads, padding, quantization]: the names of qconv2d_pixels' stages before its
    accumulator `name` (quantization None where x came quantized), found by following
    producers: in a qchain later layers' stages carry suffixes, and what lies before the
    padding (or the quantization) is the previous layer's."""
    found = []
    block = sch.get_sblock(name)
    for prefix in (QUADS, _PAD, QUANTIZED):
        match = [b for b in sch.get_producers(block) if sch.get(b).name_hint.startswith(prefix)]
        if not match:
            if prefix != QUANTIZED:
                raise NotApplicable(f"no {prefix} stage before {name}")
            found.append(None)
            break
        block = match[0]
        found.append(sch.get(block).name_hint)
    return found


def _split_padding(sch, name, at=1):
    """The padding block `name` split into a constant fill and the copy of the inside (in
    place): vectors without a per-element branch, whose masked loads of the 0-d scale and
    zero point were gathers (a third of the pixel-lanes kernel's time). The fill goes before
    the block's loop `at` (1: under the image). The fill's name, if split."""
    block = sch.get_sblock(name)
    try:
        fill = sch.decompose_padding(block, sch.get_loops(block)[at])
    except Exception as err:  # noqa: BLE001 - TVM's own check: one block, branches
        _probe(f"decompose_padding of block {name}", err)
        return []
    return [sch.get(fill).name_hint]


def _vectorize_last(sch, block_name, unroll_from=None):
    """Block `block_name`'s last loop vectorized (on a copy: the schedule returned), its
    loops from index `unroll_from` on unrolled (the epilogue's under the tile: constant
    offsets into the accumulator tile). A producer per image: quads, the 4 bytes of a pixel moved as one
    32-bit word; the padded input, a row of pixels."""
    trial = sch.copy()
    try:
        block = trial.get_sblock(block_name)
        *outer, inner = trial.get_loops(block)
        trial.vectorize(inner)
    except Exception as err:  # noqa: BLE001 - left scalar
        _probe(f"vectorize {block_name}", err)
        return sch
    for lp in outer[unroll_from:] if unroll_from is not None else ():
        _unroll(trial, lp)
    return trial
