"""PyTorch side of bench/peers.py: runs in .venv-bench, in its own process.

Sections (spec["section"]): train (eager, torch.compile), infer (eager, torch.compile), ops
(GEMM; conv2d in NCHW and channels_last), transformer and resnet (issue 11: train step,
inference at batch 1 and 64, the transformer's KV-cache decode step; models in
_torch_models.py). Prints one JSON line {"rows": [...], "info": {...}}.
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

import _torch_models
from _gemm_cases import gemm_apply, gemm_shapes
from _timing import emit, first_and_median, guarded, median_seconds, read_spec
from _workloads import data, decode_position, resnet_params, transformer_params

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
            a, b = (torch.randn(*s, generator=g) for s in gemm_shapes(case))

            def run(a=a, b=b, case=case):  # torch.mm / torch.bmm on transposed views
                return {"seconds": median_seconds(lambda: gemm_apply(case, a, b), spec)}

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


# ---- transformer and resnet (issue 11) ------------------------------------------------------
def _checked(model, want):
    got = sum(p.numel() for p in model.parameters())
    if got != want:
        raise ValueError(f"the PyTorch model has {got} parameters, tvmfront's {want}")
    return model


def _train_step(model, o, x, y, compiled, flat):
    """forward, cross-entropy (over every position when `flat`), backward, clipping to
    o["max_norm"] when set, optimizer step; loss.item(). torch.compile: the loss and the
    optimizer step compiled separately, as in the train section."""
    opt = _torch_models.optimizer(o, model.parameters())

    def loss_fn(x, y):
        out = model(x)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)) if flat else \
            F.cross_entropy(out, y)

    opt_step = opt.step
    if compiled:
        loss_fn, opt_step = torch.compile(loss_fn), torch.compile(opt.step)
    params = list(model.parameters())

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        if o.get("max_norm"):
            torch.nn.utils.clip_grad_norm_(params, o["max_norm"])
        opt_step()
        return loss.item()

    return step


def _forward(model, x, compiled):
    fwd = torch.compile(model) if compiled else model

    def call():
        with torch.no_grad():
            return fwd(torch.from_numpy(x)).numpy()

    return call


def _workload_rows(section, cases):
    rows = []
    for case, make in cases:
        for contender, compiled in (("PyTorch eager", False), ("torch.compile", True)):
            rows.append(dict(guarded(make, compiled), section=section, case=case,
                             contender=contender))
    return rows


def section_transformer(spec):
    cfg = spec["config"]
    m, batch = cfg["model"], cfg["batch"]
    arrays = data("transformer", cfg, "int64")
    want = transformer_params(cfg)

    def model():
        torch.manual_seed(0)
        return _checked(_torch_models.CausalLM(**m), want)

    x, y = arrays["x"], arrays["y"]
    cases = [(f"train b{batch}", lambda c: first_and_median(
        _train_step(model().train(), cfg["optimizer"], x, y, c, flat=True), spec))]
    for b, xb in arrays["infer"].items():
        cases.append((f"infer b{b}", lambda c, xb=xb: first_and_median(
            _forward(model().eval(), xb, c), spec)))
    pos = decode_position(cfg)

    def decode(compiled):
        net = model().eval()
        shape = (m["num_layers"], 1, m["nhead"], m["context"], m["d_model"] // m["nhead"])
        g = torch.Generator().manual_seed(0)
        k, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        token = torch.ones((1, 1), dtype=torch.int64)
        fn = torch.compile(net.decode) if compiled else net.decode

        def call():
            with torch.no_grad():
                return fn(token, pos, k, v).numpy()

        return first_and_median(call, spec)

    cases.append((f"decode b1 @{pos}", decode))
    return _workload_rows("transformer", cases)


def section_resnet(spec):
    cfg = spec["config"]
    arrays = data("resnet", cfg, "int64")
    x, y = arrays["x"], arrays["y"]
    want = resnet_params(cfg)

    def model():
        torch.manual_seed(0)
        return _checked(_torch_models.ResNet(cfg), want)

    cases = [(f"train b{cfg['batch']}", lambda c: first_and_median(
        _train_step(model().train(), cfg["optimizer"], x, y, c, flat=False), spec))]
    for b, xb in arrays["infer"].items():
        cases.append((f"infer b{b}", lambda c, xb=xb: first_and_median(
            _forward(model().eval(), xb, c), spec)))
    return _workload_rows("resnet", cases)


SECTIONS = {"train": section_train, "infer": section_infer, "ops": section_ops,
            "transformer": section_transformer, "resnet": section_resnet}


def main():
    rows = SECTIONS[SPEC["section"]](SPEC)
    emit({"rows": rows, "info": {"torch": torch.__version__, "threads": torch.get_num_threads()}})


if __name__ == "__main__":
    sys.exit(main())
