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

--ab also builds the same model without tvmfront's GEMV schedule (batch-1 Linear layers as
before: scalar tiles / dlight's GEMV) and times, in alternating rounds in this process: the
decode VM function of each build (device tensors), and generate.sample through call_tensors
(caches kept on the device) against the numpy round trip of `call` on the old build (the
path before). --torch DIR times PyTorch eager's decode step of the same model (DIR holds the
bench branch's _torch_models.py and _workloads.py) in .venv-bench, in its own process, in
rounds interleaved with tvmfront's.
"""

import argparse
import json
import os
import subprocess
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


_TORCH_DECODE = """
import json, sys, time
import torch
sys.path.insert(0, sys.argv[1])
from _torch_models import CausalLM
cfg, rounds, n = json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
torch.manual_seed(0)
net = CausalLM(**cfg).eval()
shape = (cfg["num_layers"], 1, cfg["nhead"], cfg["context"], cfg["d_model"] // cfg["nhead"])
k, v = torch.randn(shape), torch.randn(shape)
token, pos = torch.ones((1, 1), dtype=torch.int64), cfg["context"] // 2
def call():
    with torch.no_grad():
        return net.decode(token, pos, k, v).numpy()
for _ in range(20):
    call()
for _ in range(rounds):
    sys.stdin.readline()  # the driver's turn signal: rounds interleave with tvmfront's
    w, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        call()
    print(json.dumps([(time.perf_counter() - w) / n * 1e3, (time.process_time() - c) / n * 1e3]),
          flush=True)
"""


def _torch_rounds(folder, cfg, rounds, n):
    """A PyTorch eager decode-step process: send a line, read one round's (wall, CPU) ms."""
    python = os.environ.get("BENCH_PYTHON", os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-bench", "bin",
        "python"))
    proc = subprocess.Popen([python, "-c", _TORCH_DECODE, folder, json.dumps(cfg), str(rounds),
                             str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def one_round():
        proc.stdin.write("go\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())
    return proc, one_round


def _median(rows):
    rows = sorted(rows, key=lambda r: r[1])
    return rows[len(rows) // 2]


def _ab(a, model, module, rng):
    """Alternating rounds: decode VM function and generate.sample, new build vs the build
    without tvmfront's GEMV rule (and sample through numpy `call`, the path before), plus
    PyTorch eager with --torch. {name: median (wall ms, CPU ms)} of the rounds."""
    from tvmfront import schedule

    saved, cache = schedule.gemv._gemv, os.environ.get("TVMFRONT_CACHE")
    schedule.gemv._gemv = lambda func, params: None  # the rule off: the kernels' schedules before
    os.environ["TVMFRONT_CACHE"] = "0"  # the cache cannot see the patch: a hit is the new build
    try:
        t, c = time.perf_counter(), time.process_time()
        old = tvf.compile_inference(model, tvf.Spec(("batch", "seq"), "int64"),
                                    methods={"prefill": model.prefill_spec(a.batch),
                                             "decode": model.decode_spec(a.batch)})
        old_compile_s = (time.perf_counter() - t, time.process_time() - c)
    finally:
        schedule.gemv._gemv = saved
        os.environ.pop("TVMFRONT_CACHE") if cache is None else \
            os.environ.__setitem__("TVMFRONT_CACHE", cache)
    _, k, v = module.prefill(rng.integers(0, a.vocab, size=(a.batch, a.context // 2)))
    token, pos = np.ones((a.batch, 1), np.int64), np.array(a.context // 2, np.int64)

    def vm_step(m):
        fn = m._function("method_decode")
        args = [to_device(x, m.device) for x in (token, pos, k, v)]
        return lambda: fn(*args, *m._params, *m._buffers)

    prompt = rng.integers(0, a.vocab, size=(a.batch, 8))
    steps = min(a.steps, a.context - 8)

    def sample_numpy(m):  # generate.sample as it was: numpy in and out of module.call
        logits, kc, vc = m.call("prefill", prompt)
        for i in range(steps - 1):
            logits, kc, vc = m.call("decode", np.ones((a.batch, 1), np.int64),
                                    np.array(8 + i, np.int64), kc, vc)

    cases = {"decode_vm new": (vm_step(module), 200),
             "decode_vm old (no tvmfront.gemv)": (vm_step(old), 200),
             "sample new (gemv + call_tensors)": (lambda: generate.sample(
                 module, prompt, steps, temperature=0.8, top_k=10), 1),
             "sample old (no gemv, numpy call)": (lambda: sample_numpy(old), 1)}
    rows = {name: [] for name in cases}
    torch = None
    if a.torch:
        cfg = dict(vocab_size=a.vocab, context=a.context, d_model=a.d_model, nhead=a.nhead,
                   num_layers=a.layers, dim_feedforward=a.ff)
        torch, torch_round = _torch_rounds(a.torch, cfg, a.rounds, 200)
        rows["torch eager decode"] = []
    for name, (fn, _) in cases.items():
        fn()  # warm
    for _ in range(a.rounds):
        for name, (fn, n) in cases.items():
            wall, cpu = _timed(fn, n)
            scale = steps if name.startswith("sample") else 1
            rows[name].append((wall / scale, cpu / scale))
        if torch is not None:
            rows["torch eager decode"].append(tuple(torch_round()))
    if torch is not None:
        torch.wait()
    out = {name: tuple(round(x, 4) for x in _median(r)) for name, r in rows.items()}
    out["compile_s old (no tvmfront.gemv, cache off): wall, CPU"] = tuple(
        round(x, 1) for x in old_compile_s)
    return out


def _profile(module, args, repeat=20):
    """({kernel name: [microseconds per step, calls per step]} of method_decode, timed in
    this thread's CPU time by a VM instrument around every call; {the step's CPU us without
    an instrument, with a no-op one, the instrument's cost per call}). That cost (~3-7 us a
    call here, ~380 calls a step) is mostly what the vm.builtin rows measure: a builtin
    itself takes well under a microsecond."""
    vm = module._vm  # instrumented from here on: profile last
    times, started, count = {}, {}, [0]

    def instrument(func, symbol, before, ret, *_):
        if before:
            started[symbol] = time.thread_time()
        else:
            row = times.setdefault(symbol, [0.0, 0])
            row[0] += (time.thread_time() - started[symbol]) * 1e6 / repeat
            row[1] += 1 / repeat
        return 0

    def noop(*_):
        count[0] += 1
        return 0

    fn = vm["method_decode"]
    plain = _timed(lambda: fn(*args), 100)[1] * 1e3
    vm.set_instrument(noop)
    count[0] = 0
    fn(*args)
    calls = count[0] // 2
    with_noop = _timed(lambda: fn(*args), 100)[1] * 1e3
    vm.set_instrument(instrument)
    for _ in range(repeat):
        fn(*args)
    cost = {"step_cpu_us": round(plain, 1), "step_cpu_us_noop_instrument": round(with_noop, 1),
            "calls_per_step": calls, "instrument_us_per_call": round((with_noop - plain) /
                                                                     max(1, calls), 2)}
    return times, cost


def _group(kernel):
    """What a decode kernel does, for the breakdown: the GEMMs (projections, feed-forward,
    head), the cache copy (writing the new row into each layer's slice, stacking the layers,
    transposing keys for the scores), the rest of attention, the VM's own builtins, other."""
    if kernel.startswith("vm.builtin"):
        return "vm builtins (allocation, shape checks)"
    if "cache_write" in kernel or kernel.startswith(("stack", "transpose")):
        return "cache copy (slice+write, stack, key transpose)"
    if "dense" in kernel:
        return "dense (projections, feed-forward, head)"
    if "batch_matmul" in kernel or "softmax" in kernel:
        return "attention (scores, softmax, context)"
    return "other (norms, embeddings, residuals)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("vocab", 96), ("context", 128), ("d-model", 128), ("nhead", 4),
                          ("layers", 4), ("ff", 512), ("batch", 1), ("steps", 100)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--any-batch", action="store_true",
                    help="compile prefill and decode for any batch size (else exactly --batch)")
    ap.add_argument("--json")
    ap.add_argument("--ab", action="store_true", help="interleaved rounds against the build "
                    "without tvmfront's GEMV rule and the numpy-call sample (see above)")
    ap.add_argument("--torch", metavar="DIR", help="with --ab: also PyTorch eager's decode "
                    "step (DIR: the bench branch's _torch_models.py and _workloads.py)")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    tvf.manual_seed(0)
    model = nn.CausalLM(a.vocab, a.context, a.d_model, a.nhead, a.layers, a.ff)
    batch = "batch" if a.any_batch else a.batch
    t, c = time.perf_counter(), time.process_time()
    module = tvf.compile_inference(model, tvf.Spec(("batch", "seq"), "int64"),
                                   methods={"prefill": model.prefill_spec(batch),
                                            "decode": model.decode_spec(batch)})
    res = {"config": vars(a), "compile_s (wall, CPU)": (time.perf_counter() - t,
                                                         time.process_time() - c)}
    rng = np.random.default_rng(0)
    if a.ab:
        res["ab_median_ms_wall_cpu"] = _ab(a, model, module, rng)
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
        prof, res["profile_instrument_cost"] = _profile(
            module, dev_args + list(module._params) + list(module._buffers))
        groups = {}
        for n, (us, _) in prof.items():
            groups[_group(n)] = groups.get(_group(n), 0.0) + us
        res["profile_total_us"] = sum(groups.values())
        res["profile_groups_us"] = {g: round(us, 1) for g, us in
                                    sorted(groups.items(), key=lambda kv: -kv[1])}
        res["profile_us"] = {n: (round(us, 1), round(k, 1)) for n, (us, k) in
                             sorted(prof.items(), key=lambda kv: -kv[1][0])[:15]}
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
