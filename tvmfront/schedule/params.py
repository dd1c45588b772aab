"""What the schedules know about the target (CpuParams) and every tuning constant.

Symbolic extents (a batch size or sequence length given at run time, a ``tirx.Var``) are
planned as if they were SYMBOLIC_EXTENT (64): tile shapes, vector axes and the parallel
decision are those of the kernel at that size.

A math library call (exp, log, tanh, ...) costs as much as CALL_ITERATIONS vector iterations
in the parallel decision: LLVM calls libm once per element even in vectorized loops, so a
softmax's exp-heavy loops run in parallel at sizes where a pointwise add would not.
"""

import functools
import os

from .._tvm import cpu_vector_bits, llvm_system_cpu


# A parallel launch costs a few microseconds while the pool's workers spin (they do between
# the kernels of a step): loops with fewer (vector) iterations than this stay on one core.
# 4096 vector iterations are 64K float32 on AVX-512, about 5-30 us of single-core work, more
# in a step where the data comes from L3. At 2 threads (AVX-512 EPYC, 2026-12-05) it took the
# ResNet train step 35.6-37.2 -> 32.3 ms and the char Transformer's 20.9 -> 19.6-19.9 (its
# memory-bound BatchNorm, ReLU, softmax, layer norm kernels were serial below the old 1 << 17);
# 2048 made LeNet's batch-1 forward 0.017 -> 0.029-0.069 ms (its kernels went parallel).
PARALLEL_MIN_ITERATIONS = 1 << 12
# Row reductions are handed to dlight's Reduction rule (it parallelizes rows) from this work.
DLIGHT_REDUCTION_MIN_WORK = 1 << 17
# A packed operand copy of a GEMM (memory-bound, counted in elements) runs in parallel from
# this size.
PARALLEL_COPY_MIN_ELEMENTS = 1 << 17
# A register-tiled contraction runs in parallel from this many register FMAs (~18 us on one
# AVX-512 core, ~9 us on an AVX2 one at two FMAs a cycle; each is a whole vector register's
# work with no memory stall). The MLP's 64 -> 256 Linear at batch 64 (65K register FMAs) took
# 18.3 us on one core against a 2-thread minimum of 11.8 us (AVX-512, other jobs on the
# machine: load 3.6). Its 256 -> 10 Linear (16K) stays on one core.
GEMM_PARALLEL_MIN_ITERATIONS = 1 << 16
# LLVM calls libm for these once per element even in vectorized loops (~3 ns for expf here):
# each call weighs this many vector iterations when deciding on parallel loops.
LIBRARY_CALLS = frozenset({"exp", "exp2", "exp10", "log", "log2", "log10", "log1p", "tanh",
                           "sigmoid", "erf", "pow", "sin", "cos", "tan", "atan", "sinh", "cosh"})
CALL_ITERATIONS = 8
# Scalar reductions without register tiles need this many times more iterations.
PLAIN_PARALLEL_PENALTY = 8
# Parallel loops are fused until they have this many iterations per core.
PARALLEL_CHUNKS_PER_CORE = 8
# A parallel loop of more iterations than this is split into PARALLEL_TASKS iterations, each
# running its share serially: the body of a parallel loop is each task's own code (the
# denormal mode's check, tvmfront.denormals: a read of MXCSR, ~5.7 ns on the AVX-512 EPYC). A
# fused elementwise loop ran it for every vector: relu over b32 64@28, 114688 vectors of 14,
# took 818 us on one core of that EPYC, 165 us split (204 us with no check at all). From
# 1024 iterations on the check costs microseconds (the ResNet's SGD updates of its 3x3
# weights: 2048 and 4096 vectors of 9).
PARALLEL_TASKS_MAX = 1024
PARALLEL_TASKS = 256

# Vector registers along the vector axis when no other output axis can form a register tile
# (a prime extent): 8 independent FMA chains cover the FMA latency of two units (4 cycles).
TILE_ONLY_REGISTERS = 8
# A register tile of rows that does not divide its axis (gemm._remainder_tile) only over at
# least this many tiles: the last, partial one computes its missing rows too. At 8 the MLP's
# batch of 64 takes 6-row tiles (11, the last of 4): AVX2 code on the AVX-512 Xeon, 64 x 256 @
# 256 x 256 and 64 x 64 @ 64 x 256 1.12-1.19x (1 and 2 threads), the MLP's train step 1.063x
# (8 rounds, same loss), its inference at batch 64 1.00x.
REMAINDER_TILE_MIN_TILES = 8
# ... and an operand packed into its partial panels (rows far apart along the reduction: A of
# A^T B) is copied this many panels at a time (fewer where they do not divide the panels), so
# that a line read from a row of the source serves all their rows. AVX2 code, 1024^3 A^T B, one
# thread, against 4 x v16: panel by panel 1.03x, by 3 panels (171 = 3 x 57) 1.11x, by 9 1.13x,
# by 19 1.07x.
PARTIAL_PANEL_GROUP = 8
# Scalar accumulators in a register tile without vectors.
SCALAR_TILE = 8
# Fully unroll inner loops (register tile x innermost reduction) up to this many bodies.
UNROLL_MAX_BODY = 64
# Kernels below this many loop iterations count as trivially small (see `loop_kinds`).
SMALL_WORK = 1 << 12
# Transposing copies move blocks of one cache line per row (x86 and most AArch64 cores).
CACHE_LINE_BYTES = 64
# What copying one element of an operand costs, in multiply-adds of the reduction, when
# choosing the vector axis (gemm._choose_vector_axis): a packing copy moves ~1 element per
# 10-12 MAC-times of a register tile on one AVX-512 core (the MLP's [256, 256] weight into
# panels: ~14 us, its forward GEMM at batch 64: ~70 us). At 4 the MLP's 256x256 Linear at
# batch 64 copied its weight (64K elements) instead of its input (16K): 86 -> 79 us with the
# input, LeNet's 84->120 d/dx 2.5 -> 1.6 us, a Transformer's attention d/da 24.8 -> 15.8 us.
PACK_COST = 12
# Pack a strided operand only when the copy is this many times cheaper than the reduction.
PACK_RATIO = 8
# An operand read along the vector axis with rows at least PANEL_MIN_STRIDE elements apart
# along the reduction and bigger than PANEL_MIN_BYTES is packed into panels (see
# gemm._pack_panels): a register tile's steps along the reduction would each touch a new
# row, and rows 512 bytes to 4 KiB apart map to a few L1 sets (a [128, 384] weight, 1.5 KiB
# rows, keeps 64 of its 128 rows in L1). Operands within an L1 data cache (32 KiB on
# x86 cores) stay as they are; 64 KiB ones do not fit, and the aliasing rows make it worse
# (the MLP's 256x256 d/dw over a batch of 64, [64, 256] operands: 131 -> 95 us on one core).
PANEL_MIN_BYTES = 32 << 10
PANEL_MIN_STRIDE = 128
# The broadcast operand of A B or A B^T (rows along the tile, contiguous along the reduction)
# goes into panels of the tile's rows only from this size, beyond any x86 L2 cache: every
# pass of a vector panel then streams it from L3, one stream per tile row. On a 2-core AVX2
# EPYC (2 threads) A^T B, whose A was already in panels, ran at 0.93x numpy at 1024^3 where
# A B ran at 0.67x; smaller operands lose more to the copy than they gain (the Transformer's
# ff2, x of 2 MiB: 109 -> 97 GF/s on one AVX-512 core).
ROW_PANEL_MIN_BYTES = 4 << 20
# A GEMM whose operand packed into vector panels is at most this big runs its row tiles
# outermost, every tile sweeping all the panels from L2 (gemm._rows_outer): 512 KiB leaves
# room in the L2 of x86 server cores (512 KiB to 2 MiB) for the rows streaming through it.
ROWS_OUTER_MAX_PANEL_BYTES = 512 << 10
# A^T B's broadcast operand, packed into panels of the tile's rows and swept whole by every
# vector panel, is past the L2 of many x86 cores beyond this size: a vector axis that would
# sweep such an operand loses SWEPT_BROADCAST_COST of its score (gemm._swept_broadcast_cost),
# more than a strided write-back costs the other axis (_strided_write_cost: 0.02 and up).
BROADCAST_PANELS_MAX_BYTES = 512 << 10
SWEPT_BROADCAST_COST = 0.1
# A GEMM's operand packed along an axis whose elements lie this far apart (a page) reads a
# new page per element: vectors along such an axis lose FAR_PACK_COST of their score
# (gemm._far_pack_cost), more than a strided write-back costs.
FAR_PACK_BYTES = 4 << 10
FAR_PACK_COST = 0.5
# Reductions with an output of at most STREAM_MAX_OUTPUT_BYTES over operands of
# STREAM_MIN_OPERAND_BYTES or more use one-register vectors, leaving registers for a wider
# tile (gemm._streams_operands).
STREAM_MIN_OPERAND_BYTES = 2 << 20
STREAM_MAX_OUTPUT_BYTES = 256 << 10
# A GEMM whose vector panel (reduction x vector length) is larger than this share of the L1
# data cache runs its reduction in blocks whose slice of the panel fits (gemm._reduction_block):
# the rest of L1 holds the broadcast operand's stream and the tile's output rows. On the 2-core
# AVX-512 Xeon (48 KiB L1d: blocks of 256 steps, 32 KiB of v32 panel), 2 threads, best 0.1 s
# block of 11-15 interleaved rounds at load ~1.6, GFLOP/s, whole reduction / blocks of 256 /
# of 128: 512^3 A B 268 / 291 / 287; the d/dw [1024, 512]^T @ [1024, 128] 184 / 202 / 195.
L1_PANEL_SHARE = 2 / 3
# ... only where the output is at most this size: every block after the first reads and
# writes the whole output again, from L2 where it stays there, else from L3. One AVX-512 core
# (2 MiB L2), CPU time, medians of 7 interleaved rounds, GFLOP/s whole / blocked: 512^3 A B
# (1 MiB output) 151 / 156; Transformer backward GEMMs (K = 384..1024, 64-512 KiB outputs)
# -1.7% to +8%; 1024^3 (4 MiB) 130-145 / 113-131 in A B and A^T B (-7 to -19%).
REDUCTION_BLOCK_MAX_OUTPUT_BYTES = 1 << 20
# A bigger output is computed in blocks of rows, a core's share of a block (its columns) at
# most this share of the L2 cache (gemm._row_blocks), each accumulated there over the blocks
# of the reduction, beside the broadcast operand's rows of it for one block of the reduction
# and the panels streaming through. 1024^3 on the 2-core AVX-512 Xeon (2 MiB L2 per core),
# interleaved, 1 and 2 threads, whole rows by block (before): blocks of 512 KiB took
# 0.96-0.98x the time of 256 KiB ones; 1 MiB ones 0.99-1.01x. AVX2 code for the default L2
# (512 KiB: 54 rows of 2 KiB per core) took 1.01x the time of 114-row blocks.
OUTPUT_BLOCK_L2_SHARE = 1 / 4
# ... from this vector width: AVX2 (its 6 x v16 tile, 12 accumulators: _remainder_tile; the
# 4 x v16 tile before ran 0.98-1.01x the whole reduction's time at 2 threads) and up; not
# NEON's 128-bit vectors (untried there).
ROW_BLOCKS_MIN_VECTOR_BITS = 256
# ... and not in blocks shorter than this: each block loads and stores the output tile again.
MIN_REDUCTION_BLOCK = 64
# The L1 data cache where the target is not this machine's CPU (x86 cores since Haswell and
# Zen: 32 or 48 KiB; AArch64 cores: 32 to 64 KiB).
DEFAULT_L1D_BYTES = 32 << 10
# ... and the L2 cache of one core (Zen 2 and 3: 512 KiB; Intel server cores 1-2 MiB).
DEFAULT_L2_BYTES = 512 << 10
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
# TVM puts a buffer allocated inside a kernel on the stack only when it is smaller than this
# and in "global" scope (runtime::kMaxStackAlloca, LowerTVMBuiltin); any other, "local" ones
# included, is a TVMBackendAllocWorkspace / FreeWorkspace call pair each time its allocation
# is reached (once per 16x16 plane in LeNet's max-pool gradient, 384 per call). On the stack
# LLVM can also keep such a buffer in registers.
STACK_MAX_BYTES = 1024
# conv_forward's rule applies from this vector width (AVX-512: 32 registers, where it was
# measured). AVX2's 16 registers hold tiles of 4 columns x v16 at most, which its tests pin to
# the GEMM family's choices (4 channels x 2 rows x v8 at 8 columns), untimed against it.
CONV_MIN_VECTOR_BITS = 512
# ... and to these strides (the image read x[n, c, s * i + kh, s * j + kw]). Each image element
# is broadcast to a vector of output channels, so a stride costs no gathers; the GEMM family's
# tile of the same kernel fused channel panels with the images and padded the whole batch first
# (stride 2, AVX-512, 2 threads: 64->64 @8 (from 16) 161 -> ~290 GFLOP/s).
CONV_STRIDES = (1, 2)
# A strided conv's zero padding is copied per this many output rows (fewer where they do not
# divide the rows), not per image: at stride 2 the input is four times the output plane, and
# its copy from memory, one pass per image before the tiles, took a quarter of 16->32 @16
# (from 32) on one core. Per block of rows the reads alternate with the tiles, in L1.
CONV_STRIDED_PAD_ROWS = 2
# At stride 1 the padding is copied per image where the padded image fits in L1 (an Intel
# server core's 48 KiB: ResNet's 32->32 @16, 41 KiB, 1.00x per block of rows), else per this
# many output rows where their input rows fit in it: every output-channel panel sweeps the
# image, read from L2 where it is larger (1 AVX-512 thread, CPU time: b32 32->64 @28, 113 KiB,
# 0.97-0.99x the time; 64->64 @14, 64 KiB, 0.97x; b32 32->32 @32 0.96x; b64 16->32 @32
# 0.94x; with 4 rows over L1, b16 128->128 @28, 1.005x; per 2 rows @28 1.14x, per 7 @14 1.15x).
CONV_PAD_L1_BYTES = 48 << 10
CONV_PAD_ROWS = 4
# A padding placed in a loop is copied with its borders stored apart (pad_borders.py), not
# zero-filled whole and then copied, from this many bytes per copy: below it the block stays
# in L1 through both passes and a branch and the border's stores per row cost more. One
# AVX-512 core, old/new interleaved: 16->16 @32 (74 KiB per image) forward and d/dx 1.06x,
# the stem's d/dx (16 channels @32) 1.25x, 32->32 @16 (41 KiB) 1.02x, b32 64->32 @28 per 4
# rows (46 KiB) 1.025x, 16->32 @32 s2 d/dx 1.03x; under it b32 32->64 @28 (23 KiB) 0.988x,
# 64->64 @8 (26 KiB) 0.99x, LeNet's 5x5 convs (2-10 KiB) 0.96-0.98x.
PAD_BORDERS_MIN_BYTES = 32 << 10
# conv_forward unrolls the window's rows too (its columns always are) up to this many taps: one
# loop iteration per input channel, 3 x 3 x 7 x 2 = 126 FMAs (3x3 on one AVX-512 core, old/new
# per round, median of 21: b32 32->64 @28 1.006x, 64->64 @14 1.013x, 128->128 @7 1.006x).
UNROLLED_WINDOW_TAPS = 9
# conv_weight_grad unrolls this many steps along the columns j of its reduction (fewer where
# they do not divide it): the 28-step loop of the b32 32->64 @28 d/dw (24 FMAs a step) paid
# its exit and its 6 dy_t loads a step, which the unrolled steps share (q shifts the column:
# j + 2 - q). One AVX-512 core, old/new alternated: 32->64 @28 6.23 -> 5.71 ms (its forward
# 5.7); ResNet's b64 16->16 @32 2.08 -> 1.95, 32->32 @16 1.94 -> 1.79, 64->64 @8 1.87 -> 1.76;
# by 2 5.82, by 7 5.76, by 14 6.10 ms at 28.
DW_UNROLLED_COLUMNS = 4
# conv._split_divisors splits an axis by a divisor that only its simplification within the
# block reveals (a reshape's: i // T of a [B * T, E] loop reading [B, T, E]; dropout's words
# through a reshape: 4) only up to this d: a reshape's rows are not windows to unroll.
SPLIT_MAX_DIVISOR = 8
# window_reindex copies a window read out (per call) up to this many bytes: memory traffic the
# reduction must win back (LeNet's conv d/dx over a symbolic batch: a 393 KB copy, ~15 us of
# the 117 us it saves on one AVX-512 core).
REINDEX_MAX_BYTES = 1 << 20


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
        self.vector_registers = 32 if wide else 16
        # This machine's L1 data cache when the target is its CPU (-mcpu of the host, as the
        # "x86" target sets it), else DEFAULT_L1D_BYTES.
        mcpu = str(target.attrs.get("mcpu", "")) if hasattr(target, "attrs") else ""
        host = mcpu and not triple and mcpu == llvm_system_cpu()
        self.l1d_bytes = (_host_cache_bytes(1) if host else None) or DEFAULT_L1D_BYTES
        self.l2_bytes = (_host_cache_bytes(2) if host else None) or DEFAULT_L2_BYTES

    def lanes(self, dtype):
        bits = _dtype_bits(dtype)
        return max(2, self.vector_bits // max(8, bits))


@functools.lru_cache(maxsize=None)
def _host_cache_bytes(level):
    """Size of this machine's data cache of `level` for one core (Linux sysfs), or None where
    unknown."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(root)):
            def read(name, index=index):
                with open(os.path.join(root, index, name)) as f:
                    return f.read().strip()
            if read("level") == str(level) and read("type") in ("Data", "Unified"):
                size = read("size")  # "48K"
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:].upper(), 1)
                return int(size.rstrip("KkMm")) * scale
    except (OSError, ValueError):
        return None
    return None


def _dtype_bits(dtype):
    digits = "".join(ch for ch in str(dtype) if ch.isdigit())
    return int(digits) if digits else 32
