"""One rank of bench/distributed.py's training measurement (tvmfront's .venv).

    mpiexec -n 2 python bench/_dist_train.py '{"model": "lenet", "batch": 32, "steps": 60}'
    python bench/_dist_train.py '{"model": "lenet", ...}'      # one process

Each rank steps on its own batch of `batch` samples (weak scaling: the global batch grows
with the ranks, as in DDP). One process times the fused train step (module.step) and the
split one (compute_gradients + apply_gradients, what a rank runs); N processes time
DataParallel.step and its parts, then the allreduce of the same buffer alone, back to back.
Rank 0 prints one JSON line, last.
"""

import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import tvmfront as tvf  # noqa: E402

WARMUP = 5


def lenet(batch, rng):
    import lenet_digits

    tvf.manual_seed(0)
    module = tvf.compile_training(lenet_digits.make_model(), tvf.nn.CrossEntropyLoss(),
                                  lenet_digits.make_optimizer(), inputs=(batch, 1, 16, 16),
                                  labels=(batch,), accumulate=True)
    x, y, _, _ = tvf.data.load_digits()
    x = tvf.data.upsample(x, 2)

    def next_batch():
        idx = rng.integers(0, len(x), batch)
        return x[idx], y[idx]

    return module, next_batch, 1


def char(batch, rng):
    import char_transformer as ct

    text = tvf.data.load_pydoc_text()[0]
    vocab = tvf.data.char_vocab(text)
    ids = ct.split(tvf.data.encode(text, vocab))[0]
    tvf.manual_seed(0)
    model = tvf.nn.CausalLM(**ct.model_config(len(vocab)))
    spec = tvf.TensorSpec((batch, ct.CONTEXT), "int64")
    module = tvf.compile_training(model, tvf.nn.CrossEntropyLoss(), ct.make_optimizer(),
                                  inputs=spec, labels=spec, accumulate=True)
    return module, lambda: tvf.data.lm_windows(ids, batch, ct.CONTEXT, rng), ct.CONTEXT


def _timed(fn, steps):
    for _ in range(WARMUP):
        fn()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return time.perf_counter() - start, time.process_time() - cpu


def one_process(module, next_batch, steps):
    fused, fused_cpu = _timed(lambda: module.step(*next_batch()), steps)

    def split():
        _, grads = module.compute_gradients(*next_batch())
        module.apply_gradients(grads)

    split_s, _ = _timed(split, steps)
    return {"step_s": fused / steps, "cpu_s": fused_cpu / steps, "split_step_s": split_s / steps}


def collective_alone(world, buffer, repeats=200):
    """Seconds per allreduce of `buffer`, back to back: polled (tvmfront's) and blocking."""
    from mpi4py import MPI

    out = {}
    for name, fn in (("polled", lambda: world.allreduce_sum(buffer, "bench")),
                     ("blocking", lambda: world.comm.Allreduce(MPI.IN_PLACE, buffer))):
        world.barrier()
        for _ in range(10):
            fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = (time.perf_counter() - start) / repeats
    return out


def main(spec):
    world = tvf.distributed.init()
    rng = np.random.default_rng(world.rank)
    module, next_batch, tokens = {"lenet": lenet, "char": char}[spec["model"]](spec["batch"],
                                                                                 rng)
    steps = spec["steps"]
    result = {"model": spec["model"], "processes": world.size, "batch_per_rank": spec["batch"],
              "tokens_per_sample": tokens, "steps": steps,
              "threads": int(os.environ.get("TVM_NUM_THREADS", "0"))}
    if world.size == 1:
        result.update(one_process(module, next_batch, steps))
    else:
        dp = tvf.distributed.DataParallel(module, world)
        dp.broadcast_state()
        world.barrier()
        for _ in range(WARMUP):
            dp.step(*next_batch())
        dp.timings.update(steps=0, compute_s=0.0, allreduce_s=0.0, apply_s=0.0)
        world.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            dp.step(*next_batch())
        seconds = time.perf_counter() - start
        t = dp.timings
        result.update(step_s=seconds / steps, cpu_s=(time.process_time() - cpu) / steps,
                      compute_s=t["compute_s"] / steps, allreduce_s=t["allreduce_s"] / steps,
                      apply_s=t["apply_s"] / steps, message_bytes=dp.message_bytes)
        buffer = next(iter(dp._packed.buffers.values()))
        result["allreduce_alone_s"] = collective_alone(world, buffer)
    result["samples_per_s"] = world.size * spec["batch"] / result["step_s"]
    if world.rank == 0:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
