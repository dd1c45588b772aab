"""numpy/OpenBLAS GEMM and the machine's measured FMA peak, for bench/peers.py (ops section).
Runs in .venv (numpy only), in its own process.

FMA peak: a C loop of independent fused multiply-adds on the widest vectors the compiler
targets with -march=native (16 accumulators of __m512 with AVX-512F, else __m256 with
AVX2+FMA), built here with the system C compiler (cc -O2 -march=native) and called through
ctypes from one Python thread per core (ctypes releases the GIL); GFLOP/s = 2 x lanes x
accumulators x iterations x threads / wall time, the best of several repeats.
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

from _timing import emit, guarded, median_seconds, read_spec

SPEC = read_spec()

FMA_C = r"""
#include <immintrin.h>
#if defined(__AVX512F__)
typedef __m512 V;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
static float hsum(V v) { return _mm512_reduce_add_ps(v); }
#else
typedef __m256 V;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float hsum(V v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0;
                         for (int i = 0; i < 8; i++) s += t[i]; return s; }
#endif
#define ACC 16
int lanes(void) { return LANES; }
int accumulators(void) { return ACC; }
float fma_loop(long iters, float seed) {
    V a[ACC];
    for (int i = 0; i < ACC; i++) a[i] = SET1(seed + i);
    V b = SET1(0.9999f), c = SET1(1e-4f);
    for (long n = 0; n < iters; n++) {
#pragma GCC unroll 16
        for (int i = 0; i < ACC; i++) a[i] = FMA(a[i], b, c);
    }
    V s = a[0];
    for (int i = 1; i < ACC; i++) s = ADD(s, a[i]);
    return hsum(s);
}
"""


def fma_library():
    folder = tempfile.mkdtemp(prefix="tvmfront-bench-fma-")
    src, lib = os.path.join(folder, "fma.c"), os.path.join(folder, "fma.so")
    with open(src, "w") as f:
        f.write(FMA_C)
    cc = os.environ.get("CC", "cc")
    try:
        subprocess.run([cc, "-O2", "-march=native", "-shared", "-fPIC", src, "-o", lib],
                       check=True, capture_output=True)
        so = ctypes.CDLL(lib)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # loaded: the mapping outlives the file
    so.fma_loop.argtypes, so.fma_loop.restype = [ctypes.c_long, ctypes.c_float], ctypes.c_float
    return so


def fma_peak(threads, iters=5_000_000, repeats=20):
    so = fma_library()
    flops = 2.0 * so.lanes() * so.accumulators() * iters * threads
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=so.fma_loop, args=(iters, float(i)))
                   for i in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, flops / (time.perf_counter() - t0))
    return {"gflops": best / 1e9, "lanes": so.lanes(), "threads": threads,
            "how": f"C loop of {so.accumulators()} independent {so.lanes()}-lane fp32 FMA "
                   f"chains, cc -O2 -march=native, {threads} thread(s), best of {repeats}"}


def section_ops(spec):
    rows = []
    rng = np.random.default_rng(0)
    for name, case in spec["ops"].items():
        if case["kind"] != "gemm":
            continue
        n = case["n"]
        a = rng.standard_normal((n, n)).astype("float32")
        b = rng.standard_normal((n, n)).astype("float32")
        rows.append(dict(guarded(lambda a=a, b=b: {"seconds": median_seconds(lambda: a @ b, spec)}),
                         section="ops", case=name, contender="numpy (OpenBLAS)"))
    threads = spec.get("threads") or os.cpu_count() or 1
    rows.append(dict(guarded(fma_peak, threads), section="ops", case="FMA peak",
                     contender="measured peak"))
    return rows


def main():
    rows = section_ops(SPEC)
    blas = ""
    try:
        blas = str(np.show_config(mode="dicts")["Build Dependencies"]["blas"].get("name", ""))
    except Exception:  # older numpy: no dict mode
        pass
    emit({"rows": rows, "info": {"numpy": np.__version__, "blas": blas}})


if __name__ == "__main__":
    sys.exit(main())
