"""The GEMM family's default kernels scheduled for one CPU class, against numpy in one process.

    .venv/bin/python bench/gemm_class.py                                   # this CPU's class
    OPENBLAS_CORETYPE=Haswell .venv/bin/python bench/gemm_class.py --target x86:avx2

Each case (bench/_gemm_cases.py: A B, A B^T and A^T B at --sizes) is scheduled and compiled
for --target, as a build for that target would (tvmfront.build's pass context and codegen
target), and timed against numpy's product of the same arrays in alternating blocks
(bench/_timing.interleaved_medians): the ratio is numpy's time over tvmfront's, median over
the rounds. --threads (default: the CPUs) sets TVM_NUM_THREADS and OPENBLAS_NUM_THREADS.

On an AVX-512 machine, --target x86:avx2 with OPENBLAS_CORETYPE=Haswell (numpy's OpenBLAS then
takes the AVX2 kernels it takes on an AVX2 CPU) stands in for an AVX2 machine: the same
instructions on both sides, but this CPU's caches, latencies and clock, not an AVX2 CPU's.
Report such figures as a stand-in, beside the CPU that ran them.
"""

import argparse
import os
import platform
import sys


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="x86", help="a CPU target this machine can run "
                   "(default: this machine's, 'x86'; e.g. x86:avx2 on an AVX-512 machine)")
    p.add_argument("--sizes", default="512,1024", help="square sizes, comma-separated")
    p.add_argument("--forms", default="A B,A B^T,A^T B", help="forms, comma-separated")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (at least 1)")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes takes integers separated by commas, not {args.sizes!r}")
    if any(s < 1 for s in args.sizes):
        p.error("--sizes must be positive")
    args.forms = [f.strip() for f in args.forms.split(",")]
    return args


def main():
    args = _args()
    # before numpy's OpenBLAS and TVM's pool start
    os.environ["TVM_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import numpy as np

    from _gemm_cases import FORMS, gemm_apply, gemm_flops, gemm_shapes
    from _timing import interleaved_medians, paired_ratio
    from tvmfront._tvm import cpu_vector_bits, te, to_device, tvm
    from tvmfront.build import compile_kernels, runnable_here
    from tvmfront.schedule import schedule_prim_func
    from tvmfront.target import resolve_target

    for form in args.forms:
        if form not in FORMS:
            sys.exit(f"gemm_class.py: unknown form {form!r} (one of {', '.join(FORMS)})")
    target, host = resolve_target(args.target), resolve_target("x86")
    if target.kind.name != "llvm" or not runnable_here(target) or \
            cpu_vector_bits(target) > cpu_vector_bits(host):
        sys.exit(f"gemm_class.py: this CPU ({platform.machine()}, {cpu_vector_bits(host)}-bit "
                 f"vectors) cannot run code built for {args.target!r}")

    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        for form in args.forms:
            case = {"kind": "gemm", "n": n, "form": form}
            a, b = (rng.standard_normal(s).astype("float32") for s in gemm_shapes(case))
            func, rule = schedule_prim_func(_prim_func(te, case, a.shape, b.shape), target)
            lib = compile_kernels(func.with_attr("global_symbol", "gemm"), target)
            out = tvm.runtime.empty(gemm_apply(case, a, b).shape, "float32", tvm.cpu())
            dev_args = [to_device(a), to_device(b), out]
            lib(*dev_args)
            np.testing.assert_allclose(out.numpy(), gemm_apply(case, a, b), rtol=1e-3,
                                       atol=1e-2 * np.sqrt(n))
            blocks = interleaved_medians({"tvmfront": lambda: lib(*dev_args),
                                          "numpy": lambda: gemm_apply(case, a, b)},
                                         rounds=args.rounds)
            seconds = float(np.median(blocks["tvmfront"]))
            rows.append((f"{n} {form}", seconds, gemm_flops(case) / seconds / 1e9,
                         float(np.median(blocks["numpy"])),
                         paired_ratio(blocks, "numpy", "tvmfront"), rule.split(": ", 1)[-1]))
    coretype = os.environ.get("OPENBLAS_CORETYPE", "its own choice")
    print(f"target {args.target} ({cpu_vector_bits(target)}-bit vectors), {args.threads} "
          f"thread(s), numpy's OpenBLAS kernels: {coretype}; {args.rounds} interleaved rounds")
    print(f"{'case':14s} {'tvmfront ms':>11s} {'GF/s':>6s} {'numpy ms':>9s} "
          f"{'vs numpy':>8s}  rule")
    for name, seconds, gflops, numpy_s, ratio, rule in rows:
        print(f"{name:14s} {seconds * 1e3:11.3f} {gflops:6.0f} {numpy_s * 1e3:9.3f} "
              f"{ratio:7.2f}x  {rule}")


def _prim_func(te, case, a_shape, b_shape):
    """The case's TE product as a PrimFunc (a, b, c)."""
    form = case["form"]
    k = a_shape[0] if form == "A^T B" else a_shape[1]
    r = te.reduce_axis((0, k), "k")
    a, b = te.placeholder(a_shape, name="a"), te.placeholder(b_shape, name="b")
    if form == "A B":
        shape, fn = (a_shape[0], b_shape[1]), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r)
    elif form == "A B^T":
        shape, fn = (a_shape[0], b_shape[0]), lambda i, j: te.sum(a[i, r] * b[j, r], axis=r)
    else:
        shape, fn = (a_shape[1], b_shape[1]), lambda i, j: te.sum(a[r, i] * b[r, j], axis=r)
    return te.create_prim_func([a, b, te.compute(shape, fn, name="c")])


if __name__ == "__main__":
    main()
