"""Compress the digits LeNet: train it in float32, then fine-tune it with quantization-aware
training (fake int8) and with gradual magnitude pruning to 50 / 80 / 90 % sparsity; export
each pruned model (weights with exact zeros), reload it and report its accuracy.

    python examples/compress_digits.py --epochs 30 --out artifacts/compress_digits

Prints one line per model, `accuracy <name>=<test accuracy>`, and the QAT scales an int8
converter would read.
"""

import os
import time

import numpy as np

import tvmfront as tvf
from _common import parse_args
from lenet_digits import X_SHAPE, make_model

nn = tvf.nn
BATCH = 64


def _compile(model, lr):
    return tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(lr),
                                inputs=("batch", *X_SHAPE), labels=("batch",))


def _accuracy(module, x, y):
    return float(np.mean(module.predict(x).argmax(1) == y))


def train_float(data, epochs, seed):
    """The float LeNet, as examples/lenet_digits.py trains it: (model with the trained
    weights, test accuracy)."""
    x_train, y_train, x_test, y_test = data
    tvf.manual_seed(seed)
    model = make_model()
    module = _compile(model, 3e-3)
    trainer = tvf.Trainer(module, seed=seed, progress=False,
                          lr_schedule=lambda e: 3e-3 if e < 2 * epochs // 3 else 3e-4)
    trainer.fit(x_train, y_train, epochs=epochs, batch_size=BATCH)
    model.load_state_dict(module.state_dict())
    return model, _accuracy(module, x_test, y_test)


def fine_tune_qat(float_model, data, epochs, seed):
    """prepare_qat on the trained float model, fine-tuned at a low rate: (accuracy in
    fake-int8 eval mode, qat_scales)."""
    x_train, y_train, x_test, y_test = data
    model = nn.quantization.prepare_qat(float_model)
    module = _compile(model, 3e-4)
    tvf.Trainer(module, seed=seed, progress=False).fit(x_train, y_train, epochs=epochs,
                                                       batch_size=BATCH)
    model.load_state_dict(module.state_dict())
    return _accuracy(module, x_test, y_test), nn.quantization.qat_scales(model)


def prune_and_fine_tune(float_model, data, sparsity, epochs, seed, out=None):
    """Gradual pruning of the trained float model to `sparsity` (Zhu & Gupta's schedule over
    the first two thirds of the fine-tuning steps, masks updated between epochs), then the
    folded model compiled for inference, exported and reloaded. Returns {"one_shot": accuracy
    pruned at once without fine-tuning, "fine_tuned": accuracy of the reloaded bundle,
    "zeros": fraction of exact zeros in its pruned weights}."""
    x_train, y_train, x_test, y_test = data
    model = nn.pruning.prune(_copy(float_model), amount=0.0)
    module = _compile(model, 1e-3)
    dense = module.state_dict()
    nn.pruning.update_masks(module, sparsity)
    one_shot = _accuracy(module, x_test, y_test)
    module.load_state_dict(dense)  # masks of ones again: update_masks only grows them
    steps = epochs * -(-len(x_train) // BATCH)
    schedule = nn.pruning.PolynomialSparsity(sparsity, end_step=max(1, 2 * steps // 3))
    trainer = tvf.Trainer(module, seed=seed, progress=False)
    nn.pruning.fit(trainer, x_train, y_train, schedule, epochs=epochs, batch_size=BATCH)
    nn.pruning.update_masks(module, sparsity)  # the final sparsity, whatever the epoch count
    model.load_state_dict(module.state_dict())
    nn.pruning.remove(model)
    infer = tvf.compile_inference(model, inputs=("batch", *X_SHAPE))
    if out:
        infer = tvf.load(infer.export(os.path.join(out, f"pruned{round(sparsity * 100)}")))
    state = infer.state_dict()
    weights = [state[n] for n, _ in model.named_parameters() if n.endswith("weight")]
    zeros = sum(int(np.sum(w == 0)) for w in weights) / sum(w.size for w in weights)
    return {"one_shot": one_shot, "fine_tuned": _accuracy(infer, x_test, y_test),
            "zeros": zeros}


def _copy(model):
    fresh = make_model()
    fresh.load_state_dict(model.state_dict())
    return fresh


def main():
    args = parse_args(__doc__, "artifacts/compress_digits", epochs=30)
    x_train, y_train, x_test, y_test = tvf.data.load_digits()
    data = (tvf.data.upsample(x_train, 2), y_train, tvf.data.upsample(x_test, 2), y_test)
    t0 = time.perf_counter()
    model, acc = train_float(data, args.epochs, args.seed)
    print(f"accuracy float={acc:.4f}", flush=True)
    fine = max(1, args.epochs // 3)
    acc, scales = fine_tune_qat(model, data, fine, args.seed)
    print(f"accuracy qat_int8={acc:.4f}", flush=True)
    print("qat scales: " + ", ".join(f"{n}: input {s['input_scale']:.4g} zp "
                                     f"{s['input_zero_point']}, weight "
                                     f"{s['weight_scale'].min():.3g}..{s['weight_scale'].max():.3g}"
                                     for n, s in scales.items()))
    for sparsity in (0.5, 0.8, 0.9):
        r = prune_and_fine_tune(model, data, sparsity, args.epochs // 2, args.seed, args.out)
        tag = round(sparsity * 100)
        print(f"accuracy pruned{tag}_one_shot={r['one_shot']:.4f}")
        print(f"accuracy pruned{tag}={r['fine_tuned']:.4f} (exported, reloaded; "
              f"{r['zeros']:.3f} of the weights are exact zeros)", flush=True)
    print(f"total time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
