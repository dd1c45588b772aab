"""What dropout costs: a compiled dropout kernel against relu over the same tensor, and the char
Transformer's train step with dropout at every site against the same step without, each pair
timed in alternating rounds in one process (default schedules).

    TVM_NUM_THREADS=1 .venv/bin/python bench/dropout.py [--p 0.1] [--rounds 9]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

import numpy as np  # noqa: E402

import tvmfront as tvf  # noqa: E402
from tvmfront import ops  # noqa: E402
from tvmfront._tvm import te, to_device, tvm  # noqa: E402
from tvmfront.build import compile_kernels  # noqa: E402
from tvmfront.schedule import schedule_prim_func  # noqa: E402
from tvmfront.target import resolve_target  # noqa: E402

import _tvf_models  # noqa: E402
from _timing import alternating_medians  # noqa: E402

SHAPE = (2048, 1024)


def _alternating(timers, rounds):
    """{name: median seconds} of {name: timer}, timed in alternating rounds."""
    return dict(zip(timers, alternating_medians(list(timers.values()), rounds)))


def kernels(p, target):
    """{"relu": timer, "dropout": timer} over SHAPE, each call the best of 3 x 5 runs."""
    rng = np.random.default_rng(0)
    x = te.placeholder(SHAPE, "float32", name="x")
    key = te.placeholder((2,), "uint32", name="key")
    step = te.placeholder((), "float32", name="step")
    data = to_device(rng.standard_normal(SHAPE).astype("float32"))
    cases = {"relu": ([x], ops.relu.te_forward(x), [data]),
             "dropout": ([x, key, step], ops.dropout.te_forward(x, key, step, p=p),
                         [data, to_device(np.array([7, 9], "uint32")),
                          to_device(np.array(5.0, "float32"))])}
    timers = {}
    for name, (inputs, out, args) in cases.items():
        func, rule = schedule_prim_func(te.create_prim_func(inputs + [out]), target)
        print(f"  {name}: {rule}")
        timer = compile_kernels(func, target).mod.time_evaluator("main", tvm.cpu(), number=5,
                                                                  repeat=3)
        args = args + [tvm.runtime.empty(SHAPE, "float32", tvm.cpu())]
        timers[name] = (lambda timer=timer, args=args: min(timer(*args).results))
    return timers


def steps(p, target):
    """{"p=0": timer, "p=<p>": timer}: the char Transformer's train step (lr 0), median of 8."""
    cfg = _tvf_models.transformer_shapes()
    batch, seq = cfg["batch"], cfg["seq"]
    rng = np.random.default_rng(0)
    vocab = cfg["model"]["vocab_size"]
    x, y = (rng.integers(0, vocab, (batch, seq)).astype("int64") for _ in range(2))
    timers = {}
    for rate in (0.0, p):
        tvf.manual_seed(0)
        model = tvf.nn.CausalLM(**dict(cfg["model"], dropout=rate))
        module = tvf.compile_training(model, tvf.nn.CrossEntropyLoss(),
                                      _tvf_models.optimizer(cfg),
                                      inputs=tvf.TensorSpec((batch, seq), "int64"),
                                      labels=tvf.TensorSpec((batch, seq), "int64"),
                                      target=target, records=False)

        def timer(module=module):
            module.step(x, y, lr=0.0)
            runs = []
            for _ in range(8):
                t = time.perf_counter()
                module.step(x, y, lr=0.0)
                runs.append(time.perf_counter() - t)
            return statistics.median(runs)

        timers[f"p={rate:g}"] = timer
    return timers


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--p", type=float, default=0.1, help="dropout probability")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    target = resolve_target("x86")
    print(f"target {target}; TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"kernels over {list(SHAPE)} float32:")
    got = _alternating(kernels(args.p, target), args.rounds)
    print(f"  relu {got['relu'] * 1e3:.3f} ms, dropout {got['dropout'] * 1e3:.3f} ms: "
          f"dropout / relu {got['dropout'] / got['relu']:.2f}")
    print("char Transformer train step (examples/char_transformer.py's shapes):")
    got = _alternating(steps(args.p, target), args.rounds)
    base, with_dropout = got["p=0"], got[f"p={args.p:g}"]
    print(f"  without dropout {base * 1e3:.2f} ms, with dropout {args.p:g} "
          f"{with_dropout * 1e3:.2f} ms: {with_dropout / base:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
