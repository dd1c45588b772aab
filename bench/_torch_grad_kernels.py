"""PyTorch side of bench/grad_kernels.py: run in its own process and environment
(.venv-bench); prints one JSON line {case: {"forward_us", "backward_us"}}."""

import json
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
cases = json.loads(sys.argv[1])


def median_us(fn, repeat=30):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e6


def make(case):
    kind, shapes, attrs = case["op"], case["shapes"], case["attrs"]
    xs = [torch.randn(*s, requires_grad=True) for s in shapes]
    if kind == "matmul":
        f = lambda: xs[0] @ xs[1]
    elif kind == "conv2d":
        f = lambda: F.conv2d(xs[0], xs[1], stride=attrs.get("stride", 1),
                             padding=attrs.get("padding", 0))
    elif kind == "max_pool2d":  # the padding too: k3 s2 p1 had timed PyTorch's unpadded pool
        f = lambda: F.max_pool2d(xs[0], attrs["kernel"], attrs.get("stride"),
                                 attrs.get("padding", 0))
    elif kind == "avg_pool2d":
        f = lambda: F.avg_pool2d(xs[0], attrs["kernel"], attrs.get("stride"),
                                 attrs.get("padding", 0))
    elif kind == "relu":
        f = lambda: F.relu(xs[0])
    else:  # a case grad_kernels.py gained without its PyTorch form: say which
        raise ValueError(f"no PyTorch form for op {kind!r}")
    out = f()
    dy = torch.randn_like(out)

    def backward():
        torch.autograd.grad(out, xs, dy, retain_graph=True)

    return f, backward


results = {}
for name, case in cases.items():
    forward, backward = make(case)
    with torch.no_grad():
        fwd = median_us(forward)
    results[name] = {"forward_us": fwd, "backward_us": median_us(backward)}
print(json.dumps(results))
