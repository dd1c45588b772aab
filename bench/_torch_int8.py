"""PyTorch's x86 quantized backend on bench/int8.py's models (runs in .venv-bench, one process
per model): the same trained weights in a torch twin, float32 and int8 (eager-mode static
quantization, conv-BN(-ReLU) and Linear/Conv-ReLU fused, torch.ao.quantization with the "x86" qconfig: fbgemm/onednn kernels, per-channel
int8 weights, reduce_range activations), calibrated on the same samples. Prints one JSON row:
accuracies and median call times at batch 1 and 64.

    python bench/_torch_int8.py '{"model": "lenet", "data": "/tmp/x.npz", "threads": 2}'
"""

import copy
import os
import json
import sys
import time

import numpy as np
import torch
import torch.ao.quantization as tq
import torch.nn as tnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # _torch_resnet_q


def twin(name):
    """The tvmfront example's layers, same order (so state_dict names match: '0.weight')."""
    if name == "resnet":
        from _torch_resnet_q import ResNet

        return ResNet()
    if name == "mlp":
        return tnn.Sequential(tnn.Flatten(), tnn.Linear(64, 256), tnn.ReLU(), tnn.Linear(256, 256),
                              tnn.ReLU(), tnn.Linear(256, 10))
    return tnn.Sequential(tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
                          tnn.Linear(64, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
                          tnn.Linear(84, 10))


def fusable(seq):
    """[[layer, relu]] index pairs torch fuses (Conv2d/Linear followed by ReLU)."""
    mods = list(seq)
    return [[str(i), str(i + 1)] for i in range(len(mods) - 1)
            if isinstance(mods[i], (tnn.Linear, tnn.Conv2d)) and isinstance(mods[i + 1], tnn.ReLU)]


def median_call(fn, x, min_seconds=0.5, min_runs=30):
    """(median wall seconds per call, process CPU seconds per call)."""
    with torch.inference_mode():
        fn(x)
        times, start, cpu = [], time.perf_counter(), time.process_time()
        while len(times) < min_runs or time.perf_counter() - start < min_seconds:
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return float(np.median(times)), (time.process_time() - cpu) / len(times)


def main():
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(int(spec.get("threads", 1)))
    data = np.load(spec["data"])
    model = twin(spec["model"]).eval()
    model.load_state_dict({k[len("w:"):]: torch.from_numpy(data[k]) for k in data.files
                           if k.startswith("w:")})
    x_test, y_test = torch.from_numpy(data["x_test"]), data["y_test"]
    torch.backends.quantized.engine = "x86"
    fused = copy.deepcopy(model)
    fused = fused.fuse() if hasattr(fused, "fuse") else tq.fuse_modules(fused, fusable(fused))
    q = tq.QuantWrapper(fused)
    q.qconfig = tq.get_default_qconfig("x86")
    tq.prepare(q, inplace=True)
    with torch.inference_mode():
        q(torch.from_numpy(data["calibration"]))
    tq.convert(q, inplace=True)
    row = {"torch": torch.__version__, "engine": torch.backends.quantized.engine}
    with torch.inference_mode():
        for key, m in (("float32", model), ("int8", q)):
            row[f"torch_{key}"] = float((m(x_test).argmax(1).numpy() == y_test).mean())
    for batch in (1, 64):
        x = x_test[:batch].contiguous()
        for key, m in (("float32", model), ("int8", q)):
            wall, cpu = median_call(m, x)
            row[f"torch_{key}_b{batch}_ms"], row[f"torch_{key}_b{batch}_cpu_ms"] = 1e3 * wall, 1e3 * cpu
    print(json.dumps(row))


if __name__ == "__main__":
    main()
