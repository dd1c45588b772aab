"""ms/token of generation with a KV cache (nn.CausalLM prefill + decode), and where a decode
step's time goes.

    .venv/bin/python bench/kv_decode.py [--vocab 96 --context 128 --d-model 128 --nhead 4
                                         --layers 4 --ff 512 --batch 1 --json out.json]

Prints: compile time; ms/token of tvf.generate.sample (numpy in and out every step); the
decode step through module.call; the same VM function fed device tensors (no numpy copies,
the caches passed on as they come out); a full forward over the whole context (what a step
without a cache would cost); and the VM profiler's per-kernel times for one decode step,
grouped by kernel, with the share of the cache copy (cache_write, stack).
Wall and process CPU times, and the load average (the machine may be shared).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tvmfront as tvf  # noqa: E402
from tvmfront import generate, nn  # noqa: E402
from tvmfront._tvm import to_device  # noqa: E402


def _timed(fn, n):
    fn()  # warm
    w, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - w) / n * 1e3, (time.process_time() - c) / n * 1e3


def _profile(module, args, repeat=20):
    """{kernel name: [microseconds per step, calls per step]} of method_decode, timed by a VM
    instrument around every call (its own cost, ~1 us a call, lands between kernels)."""
    vm = module._vm  # instrumented from here on: profile last
    times, started = {}, {}

    def instrument(func, symbol, before, ret, *_):
        if before:
            started[symbol] = time.perf_counter()
        else:
            row = times.setdefault(symbol, [0.0, 0])
            row[0] += (time.perf_counter() - started[symbol]) * 1e6 / repeat
            row[1] += 1 / repeat
        return 0

    fn = vm["method_decode"]
    fn(*args)  # warm, not instrumented
    vm.set_instrument(instrument)
    for _ in range(repeat):
        fn(*args)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("vocab", 96), ("context", 128), ("d-model", 128), ("nhead", 4),
                          ("layers", 4), ("ff", 512), ("batch", 1), ("steps", 100)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--any-batch", action="store_true",
                    help="compile prefill and decode for any batch size (else exactly --batch)")
    ap.add_argument("--json")
    a = ap.parse_args()
    tvf.manual_seed(0)
    model = nn.CausalLM(a.vocab, a.context, a.d_model, a.nhead, a.layers, a.ff)
    batch = "batch" if a.any_batch else a.batch
    t = time.perf_counter()
    module = tvf.compile_inference(model, tvf.Spec(("batch", "seq"), "int64"),
                                   methods={"prefill": model.prefill_spec(batch),
                                            "decode": model.decode_spec(batch)})
    res = {"config": vars(a), "compile_s": time.perf_counter() - t}
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, a.vocab, size=(a.batch, 8))
    steps = min(a.steps, a.context - 8)
    w, c = time.perf_counter(), time.process_time()
    generate.sample(module, prompt, steps=steps, temperature=0.8, top_k=10)
    res["sample_ms_per_token"] = ((time.perf_counter() - w) / steps * 1e3,
                                  (time.process_time() - c) / steps * 1e3)

    _, k, v = module.prefill(rng.integers(0, a.vocab, size=(a.batch, a.context // 2)))
    token, pos = prompt[:, :1], np.array(a.context // 2, np.int64)
    res["decode_call_ms"] = _timed(lambda: module.decode(token, pos, k, v), 50)

    fn = module._function("method_decode")
    dev_args = [to_device(x, module.device) for x in (token, pos, k, v)]
    state = {"kv": dev_args[2:]}

    def raw():  # the caches go from one step to the next as device tensors
        out = fn(dev_args[0], dev_args[1], *state["kv"], *module._params, *module._buffers)
        state["kv"] = [out[1], out[2]]
    res["decode_vm_ms"] = _timed(raw, 50)

    full = rng.integers(0, a.vocab, size=(a.batch, a.context))
    res["forward_full_context_ms"] = _timed(lambda: module(full), 10)
    cache_mb = 2 * np.prod(model.cache_shape(a.batch)) * 4 / 2 ** 20
    res["cache_mb_k_plus_v"] = float(cache_mb)
    try:
        prof = _profile(module, dev_args + list(module._params) + list(module._buffers))
        total = sum(us for us, _ in prof.values())
        copy = sum(us for n, (us, _) in prof.items() if "cache_write" in n or "stack" in n)
        res["profile_us"] = {n: (round(us, 1), round(k, 1)) for n, (us, k) in
                             sorted(prof.items(), key=lambda kv: -kv[1][0])[:15]}
        res["profile_total_us"], res["profile_cache_copy_us"] = total, copy
    except Exception as e:  # the profiler is a diagnostic: its absence does not sink the run
        res["profile_error"] = f"{type(e).__name__}: {e}"
    res["loadavg"] = open("/proc/loadavg").read().split()[:3]
    for key, val in res.items():
        print(f"{key}: {val}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=float)


if __name__ == "__main__":
    main()
