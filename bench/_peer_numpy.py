"""numpy/OpenBLAS GEMM and the machine's FMA peak, measured and theoretical, for
bench/peers.py (ops section). Runs in .venv (numpy only), in its own process.

    .venv/bin/python bench/_peer_numpy.py --peak     # the peak alone, in words

Measured FMA peak: a C loop of independent fused multiply-adds on the widest vectors the
compiler targets with -march=native, built here with the system C compiler (cc -O3) and
called through ctypes from one Python thread per core (ctypes releases the GIL); GFLOP/s = the
sum over the threads of 2 x lanes x chains x iterations / that thread's loop time (timed in C,
from a spin barrier that starts the threads' loops together), the best of many repeats (load
from other processes only ever lowers a repeat). Timed from Python, around the threads' start
and join, it read 3% low (2-core AVX-512 EPYC: 223 GFLOP/s where the loop itself ran at 231 and
PyTorch's conv counted 222). The chains must cover FMA latency x FMA units
(Zen 3: 4 x 2 = 8, Haswell: 5 x 2 = 10) and must all live in registers: the earlier probe
kept 16 __m256 chains on AVX2, which has 16 ymm registers, so with the two constants three
chains spilled to the stack every iteration, and the store/reload latency capped it at
112 GFLOP/s where numpy's sgemm reached 148 (2-core AMD EPYC, AVX2). Now: 12 chains in AVX2
(14 of 16 registers), 24 with AVX-512 (32 zmm registers).

Theoretical peak: cores x FMA units per core x lanes x 2 flops x clock. Cores: distinct
(physical id, core id) pairs in /proc/cpuinfo, at most the thread count used. Lanes: the
probe's vector width. FMA units: 2 for AVX2-class x86 cores (Haswell on, Zen 2 on), 1 on
Zen 1 (AMD family 0x17, model < 0x30: its 256-bit FMA is split in two 128-bit halves),
1 per 512-bit op on AMD with AVX-512 (Zen 4 runs it on two 256-bit pipes), 2 on Intel
with AVX-512 (Xeon Gold/Platinum; Silver/Bronze have 1): a table, not a measurement.
Clock: both the nominal one (/proc/cpuinfo "cpu MHz"; under KVM the TSC rate) and one
measured by a chain of dependent integer adds (one cycle each on every x86 core), so boost
clocks show.
"""

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from _gemm_cases import gemm_apply, gemm_shapes
from _timing import emit, guarded, median_seconds, read_spec

SPEC = read_spec() if sys.argv[1:2] != ["--peak"] else {}

FMA_C = r"""
#include <immintrin.h>
#if defined(__AVX512F__)
typedef __m512 V;
#define LANES 16
#define ACC 24 /* of 32 zmm registers */
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
static float hsum(V v) { return _mm512_reduce_add_ps(v); }
#else
typedef __m256 V;
#define LANES 8
#define ACC 12 /* of 16 ymm registers: with b and c, 14; 16 chains spill */
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float hsum(V v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0;
                         for (int i = 0; i < 8; i++) s += t[i]; return s; }
#endif
#include <time.h>
int lanes(void) { return LANES; }
int accumulators(void) { return ACC; }
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
/* The loop's own seconds, timed here once every one of `threads` callers has arrived at the
   spin barrier `arrived` (so that they run at once): Python's thread start and join stay out
   of the time (they had cost 3% of a 1M-iteration run). `sink` keeps the sums live. */
double fma_loop(long iters, float seed, int *arrived, int threads, float *sink) {
    V a[ACC];
    for (int i = 0; i < ACC; i++) a[i] = SET1(seed + i);
    V b = SET1(0.9999f), c = SET1(1e-4f);
    __atomic_add_fetch(arrived, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(arrived, __ATOMIC_SEQ_CST) < threads) {}
    double t0 = now();
    for (long n = 0; n < iters; n++) {
#pragma GCC unroll 32
        for (int i = 0; i < ACC; i++) a[i] = FMA(a[i], b, c);
    }
    double seconds = now() - t0;
    V s = a[0];
    for (int i = 1; i < ACC; i++) s = ADD(s, a[i]);
    *sink = hsum(s);
    return seconds;
}
/* 32 dependent one-cycle adds per iteration: iterations x 32 / seconds = the clock. The
   addend is a register: Intel's Golden Cove and later cores fold chains of add-immediate at
   rename (such a chain read 20.3 GHz on a 2.6 GHz Xeon; with a register 3.56, as a chain of
   3-cycle imuls). */
#define A4 "add %1, %0\n\t" "add %1, %0\n\t" "add %1, %0\n\t" "add %1, %0\n\t"
long add_chain(long iters) {
    long x = 0, one = 1;
    for (long n = 0; n < iters; n++)
        __asm__ volatile(A4 A4 A4 A4 A4 A4 A4 A4 : "+r"(x) : "r"(one));
    return x;
}
"""


def fma_library(march="native"):
    folder = tempfile.mkdtemp(prefix="tvmfront-bench-fma-")
    src, lib = os.path.join(folder, "fma.c"), os.path.join(folder, "fma.so")
    with open(src, "w") as f:
        f.write(FMA_C)
    cc = os.environ.get("CC", "cc")
    try:
        subprocess.run([cc, "-O3", f"-march={march}", "-shared", "-fPIC", src, "-o", lib],
                       check=True, capture_output=True)
        so = ctypes.CDLL(lib)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # loaded: the mapping outlives the file
    so.fma_loop.argtypes = [ctypes.c_long, ctypes.c_float, ctypes.POINTER(ctypes.c_int),
                            ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
    so.fma_loop.restype = ctypes.c_double
    so.add_chain.argtypes, so.add_chain.restype = [ctypes.c_long], ctypes.c_long
    return so


def cpuinfo():
    """{'vendor', 'family', 'model', 'mhz', 'cores', 'flags'} of the first CPU in
    /proc/cpuinfo (cores: distinct physical id/core id pairs); {} where there is none."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return {}
    info, cores = {}, set()
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        cores.add((fields.get("physical id"), fields.get("core id"),
                   None if "core id" in fields else fields.get("processor")))
        if not info:
            info = {"vendor": fields.get("vendor_id", ""),
                    "family": int(fields.get("cpu family", "0")),
                    "model": int(fields.get("model", "0")),
                    "mhz": float(fields.get("cpu MHz", "0") or 0),
                    "flags": set(fields.get("flags", "").split())}
    info["cores"] = len(cores)
    return info


def fma_units(info, lanes):
    """FMA units per core for vectors of `lanes` fp32, and why (a table: see the docstring)."""
    amd = info.get("vendor") == "AuthenticAMD"
    if lanes == 16:
        return (1, "AMD with AVX-512: one 512-bit FMA per cycle (two 256-bit pipes)") if amd \
            else (2, "Intel with AVX-512: two 512-bit FMA units (Gold/Platinum)")
    if amd and info.get("family") == 0x17 and info.get("model", 0) < 0x30:
        return 1, "Zen 1: one 256-bit FMA per cycle"
    return 2, "x86 with AVX2: two 256-bit FMA units"


def measured_clock_ghz(so, iters=200_000, repeats=200):
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        so.add_chain(iters)
        best = max(best, 32 * iters / (time.perf_counter() - t0))
    return best / 1e9


def theoretical_peak(so, threads):
    info = cpuinfo()
    lanes = so.lanes()
    units, why = fma_units(info, lanes)
    cores = min(threads, info.get("cores") or threads)
    clock = measured_clock_ghz(so)
    nominal = info.get("mhz", 0) / 1e3
    per_ghz = cores * units * lanes * 2
    return {"theoretical_gflops": per_ghz * clock,
            "theoretical_nominal_gflops": per_ghz * nominal if nominal else None,
            "clock_ghz": clock, "nominal_ghz": nominal or None,
            "theoretical_how": f"{cores} cores x {units} FMA x {lanes} lanes x 2 x clock "
                               f"({why}); clock {clock:.2f} GHz measured by a dependent-add "
                               f"chain" + (f", {nominal:.2f} GHz nominal (/proc/cpuinfo)"
                                           if nominal else "")}


def fma_peak(threads, march="native", iters=1_000_000, repeats=100):
    so = fma_library(march)
    flops = 2.0 * so.lanes() * so.accumulators() * iters  # per thread
    best = 0.0
    for _ in range(repeats):
        arrived, sinks = ctypes.c_int(0), [ctypes.c_float() for _ in range(threads)]
        seconds = [0.0] * threads

        def run(i):
            seconds[i] = so.fma_loop(iters, float(i), ctypes.byref(arrived), threads,
                                     ctypes.byref(sinks[i]))

        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        # each thread's rate over its own loop, all of them running at once (the barrier)
        best = max(best, sum(flops / s for s in seconds))
    row = {"gflops": best / 1e9, "lanes": so.lanes(), "threads": threads}
    row.update(guarded(theoretical_peak, so, threads))
    theory = ""
    if "theoretical_gflops" in row:
        nominal = row["theoretical_nominal_gflops"]
        theory = (f"; theoretical {row['theoretical_gflops']:.0f} GFLOP/s"
                  + (f" ({nominal:.0f} at the nominal clock)" if nominal else "")
                  + f" = {row['theoretical_how']}")
    row["how"] = (f"C loop of {so.accumulators()} independent {so.lanes()}-lane fp32 FMA "
                  f"chains in registers, cc -O3 -march={march}, {threads} thread(s), best of "
                  f"{repeats}{theory}")
    return row


def section_ops(spec):
    rows = []
    rng = np.random.default_rng(0)
    for name, case in spec["ops"].items():
        if case["kind"] != "gemm":
            continue
        a, b = (rng.standard_normal(s).astype("float32") for s in gemm_shapes(case))

        def run(a=a, b=b, case=case):  # a transposed view: sgemm's transpose flag, no copy
            return {"seconds": median_seconds(lambda: gemm_apply(case, a, b), spec)}

        rows.append(dict(guarded(run), section="ops", case=name, contender="numpy (OpenBLAS)"))
    threads = spec.get("threads") or os.cpu_count() or 1
    rows.append(dict(guarded(fma_peak, threads, spec.get("march", "native")), section="ops",
                     case="FMA peak", contender="measured peak"))
    return rows


def section_peak(spec):
    """The measured FMA peak alone (the transformer and resnet sections' "what bounds it")."""
    threads = spec.get("threads") or os.cpu_count() or 1
    return [dict(guarded(fma_peak, threads, spec.get("march", "native")),
                 section=spec["section"], case="FMA peak", contender="measured peak")]


def print_peak():
    """--peak: numpy's sgemm at 1024 and 2048 beside the measured and theoretical peaks."""
    threads = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    for n in (1024, 2048):
        a, b = (rng.standard_normal((n, n)).astype("float32") for _ in range(2))
        seconds = median_seconds(lambda: a @ b)
        print(f"numpy sgemm {n}: {2 * n ** 3 / seconds / 1e9:.0f} GFLOP/s (median)")
    peak = fma_peak(threads)
    print(f"measured FMA peak: {peak['gflops']:.0f} GFLOP/s ({peak['how']})")


def main():
    if "--peak" in sys.argv:
        return print_peak()
    rows = (section_peak if SPEC.get("section") == "peak" else section_ops)(SPEC)
    blas = ""
    try:
        blas = str(np.show_config(mode="dicts")["Build Dependencies"]["blas"].get("name", ""))
    except Exception:  # older numpy: no dict mode
        pass
    emit({"rows": rows, "info": {"numpy": np.__version__, "blas": blas}})


if __name__ == "__main__":
    sys.exit(main())
