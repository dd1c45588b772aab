"""PyTorch side of bench/peers.py: runs in .venv-bench, in its own process.

Sections (spec["section"]): train (eager, torch.compile), infer (eager, torch.compile), ops
(GEMM; conv2d in NCHW and channels_last). Prints one JSON line {"rows": [...], "info": {...}}.
Each call takes numpy inputs (torch.from_numpy: no copy) and returns a Python float or a numpy
array, as tvmfront's module.step / module(x) do.
"""

import os
import sys
import time

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F

from _timing import emit, guarded, median_seconds, read_spec

SPEC = read_spec()
torch.set_num_threads(int(SPEC.get("threads") or os.cpu_count() or 1))
NUM_CLASSES = 10


# ---- the models of examples/mlp_digits.py and examples/lenet_digits.py ----------------------
def mlp():
    return tnn.Sequential(
        tnn.Flatten(),
        tnn.Linear(64, 256), tnn.ReLU(),
        tnn.Linear(256, 256), tnn.ReLU(),
        tnn.Linear(256, 10))


def lenet():
    return tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(),
        tnn.Linear(64, 120), tnn.ReLU(),
        tnn.Linear(120, 84), tnn.ReLU(),
        tnn.Linear(84, 10))


MODELS = {"mlp": (mlp, (1, 8, 8)), "lenet": (lenet, (1, 16, 16))}


def optimizer(name, hp, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"])
    return torch.optim.Adam(params, lr=hp["lr"], betas=(hp["b1"], hp["b2"]), eps=hp["eps"])


def _row(section, case, contender, **kw):
    return dict(section=section, case=case, contender=contender, **kw)


# ---- train ----------------------------------------------------------------------------------
def train_step(model_name, opt_name, hp, x, y, compiled):
    """A step function: forward, cross-entropy, backward, optimizer update, loss.item().
    torch.compile: the loss (forward + backward through AOTAutograd) and the optimizer step
    are compiled separately, as PyTorch's docs for compiled optimizers do it."""
    torch.manual_seed(0)
    model = MODELS[model_name][0]()
    opt = optimizer(opt_name, hp, model.parameters())

    def loss_fn(x, y):
        return F.cross_entropy(model(x), y)

    opt_step = opt.step
    if compiled:
        loss_fn = torch.compile(loss_fn)
        opt_step = torch.compile(opt.step)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        opt_step()
        return loss.item()

    return step


def section_train(spec):
    rows = []
    rng = np.random.default_rng(0)
    batch = spec["batch"]
    for model_name in spec["models"]:
        x_shape = MODELS[model_name][1]
        x = rng.standard_normal((batch, *x_shape)).astype("float32")
        y = rng.integers(0, NUM_CLASSES, batch).astype("int64")
        for opt_name in spec["optimizers"]:
            case = f"{model_name} {opt_name}"
            for contender, compiled in (("PyTorch eager", False), ("torch.compile", True)):
                def run(compiled=compiled, opt_name=opt_name):
                    step = train_step(model_name, opt_name, spec["hyper"][opt_name], x, y,
                                      compiled)
                    t0 = time.perf_counter()
                    step()  # torch.compile compiles here
                    first = time.perf_counter() - t0
                    return {"seconds": median_seconds(step, spec), "compile_s": first}

                rows.append(dict(guarded(run), section="train", case=case, contender=contender))
    return rows


# ---- infer ----------------------------------------------------------------------------------
def section_infer(spec):
    rows = []
    rng = np.random.default_rng(0)
    for model_name in spec["models"]:
        make, x_shape = MODELS[model_name]
        for batch in spec["batches"]:
            x = rng.standard_normal((batch, *x_shape)).astype("float32")
            case = f"{model_name} b{batch}"
            for contender, compiled in (("PyTorch eager", False), ("torch.compile", True)):
                def run(compiled=compiled, x=x):
                    torch.manual_seed(0)
                    model = make().eval()
                    fwd = torch.compile(model) if compiled else model

                    def call():
                        with torch.no_grad():
                            return fwd(torch.from_numpy(x)).numpy()

                    t0 = time.perf_counter()
                    call()
                    first = time.perf_counter() - t0
                    return {"seconds": median_seconds(call, spec), "compile_s": first}

                rows.append(dict(guarded(run), section="infer", case=case, contender=contender))
    return rows


# ---- ops ------------------------------------------------------------------------------------
def section_ops(spec):
    rows = []
    g = torch.Generator().manual_seed(0)
    for name, case in spec["ops"].items():
        if case["kind"] == "gemm":
            n = case["n"]
            a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)

            def run(a=a, b=b):
                return {"seconds": median_seconds(lambda: torch.mm(a, b), spec)}

            rows.append(dict(guarded(run), section="ops", case=name, contender="PyTorch"))
            continue
        x = torch.randn(case["batch"], case["cin"], case["hw"], case["hw"], generator=g)
        w = torch.randn(case["cout"], case["cin"], case["kernel"], case["kernel"], generator=g)
        for contender, fmt in (("PyTorch NCHW", torch.contiguous_format),
                               ("PyTorch channels_last", torch.channels_last)):
            def run(fmt=fmt, x=x, w=w, pad=case["pad"]):
                xf, wf = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
                with torch.no_grad():
                    return {"seconds": median_seconds(lambda: F.conv2d(xf, wf, padding=pad),
                                                      spec)}

            rows.append(dict(guarded(run), section="ops", case=name, contender=contender))
    return rows


SECTIONS = {"train": section_train, "infer": section_infer, "ops": section_ops}


def main():
    rows = SECTIONS[SPEC["section"]](SPEC)
    emit({"rows": rows, "info": {"torch": torch.__version__, "threads": torch.get_num_threads()}})


if __name__ == "__main__":
    sys.exit(main())
