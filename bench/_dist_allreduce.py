"""Allreduce (sum, float32, in place) between 2 processes on this machine, per buffer size:
MPI (mpi4py + MPICH, tvmfront's .venv; blocking Allreduce and tvmfront's polled Iallreduce)
or torch.distributed's gloo backend (.venv-bench, which has torch). Prints one JSON line:
{"backend": ..., "seconds": {size: {variant: {"median": s, "min": s}}}}: the median is what
a step sees on this machine as it is; the minimum, what the transfer costs when both ranks
hold a core (on a shared, loaded machine the median mostly measures the scheduler).

    mpiexec -n 2 .venv/bin/python bench/_dist_allreduce.py mpi 1000,1000000
    .venv-bench/bin/python bench/_dist_allreduce.py gloo 1000,1000000
"""

import json
import os
import statistics
import sys
import time

import numpy as np

REPEATS_BYTES = 2e9  # repeats: about this many bytes per size and variant (at least 20)


def _timed(fn, size, sync):
    repeats = int(min(1000, max(20, REPEATS_BYTES / (4 * size))))
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median": statistics.median(times), "min": min(times)}


def mpi(sizes):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from mpi4py import MPI

    import tvmfront as tvf

    world = tvf.distributed.init()
    out = {}
    for n in sizes:
        buf = np.ones(n, np.float32)
        out[n] = {
            "MPI blocking": _timed(lambda: world.comm.Allreduce(MPI.IN_PLACE, buf), n,
                                    world.comm.Barrier),
            "MPI polled (tvmfront)": _timed(lambda: world.allreduce_sum(buf, "bench"), n,
                                             world.comm.Barrier)}
    return world.rank, out


def _gloo_rank(rank, sizes, port, queue):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    out = {}
    for n in sizes:
        t = torch.ones(n, dtype=torch.float32)
        out[n] = {"gloo": _timed(lambda: dist.all_reduce(t), n, dist.barrier)}
    dist.destroy_process_group()
    if rank == 0:
        queue.put(out)


def gloo(sizes):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_gloo_rank, args=(r, sizes, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    out = queue.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
    return 0, out


if __name__ == "__main__":
    backend, sizes = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    rank, seconds = {"mpi": mpi, "gloo": gloo}[backend](sizes)
    if rank == 0:
        print(json.dumps({"backend": backend, "seconds": seconds}), flush=True)
