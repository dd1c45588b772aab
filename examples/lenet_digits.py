"""Train a LeNet-style CNN on scikit-learn's digits (upsampled to 16x16), export the
bundle, reload it and evaluate it.

    python examples/lenet_digits.py --out artifacts/lenet_digits
    tvmfront tune examples/lenet_digits.py --budget 64   # tune its modules (tvmfront_modules)
    mpiexec -n 2 .venv/bin/python examples/lenet_digits.py --distributed   # data-parallel
"""

import os
import time

import numpy as np

import tvmfront as tvf
from _common import compile_train_export, parse_args, tuning_modules

X_SHAPE = (1, 16, 16)


def make_model():
    nn = tvf.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),    # 1x16x16 -> 6x8x8
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),              # -> 16x4x4 -> 16x2x2
        nn.Flatten(),                                                 # -> 64
        nn.Linear(64, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def make_optimizer():
    return tvf.optim.Adam(lr=3e-3)


def tvmfront_modules(target="x86"):
    """What `tvmfront tune` tunes: the train step at batch 64, inference at batch 1 and 64."""
    return tuning_modules(make_model, make_optimizer(), X_SHAPE, target)


def train_distributed(model, data, args, lr_schedule, batch=64):
    """Data-parallel over the ranks of `mpiexec -n N`: the global batch stays 64, each rank
    steps on its 64 / N samples of it (a module for any batch size, so that every sample
    trains: the last global batch of an epoch is dealt out unevenly), gradients averaged
    every step. Rank 0 alone prints, exports and evaluates the bundle."""
    world = tvf.distributed.init()
    if batch % world.size:
        raise SystemExit(f"--distributed: {world.size} ranks do not divide the batch of {batch}")
    x_train, y_train, x_test, y_test = data
    t0 = time.perf_counter()
    module = tvf.compile_training(model, tvf.nn.CrossEntropyLoss(), make_optimizer(),
                                  inputs=("batch", *X_SHAPE), labels=("batch",),
                                  target=args.target, accumulate=True)
    trainer = tvf.Trainer(module, seed=args.seed, lr_schedule=lr_schedule, distributed=True)
    if trainer.is_main:
        print(f"compiled train step in {time.perf_counter() - t0:.1f} s (compile cache: "
              f"{module.build_info['cache']}); {world.size} ranks "
              f"of {batch // world.size} samples per step")
    trainer.fit(x_train, y_train, epochs=args.epochs, val=(x_test, y_test),
                batch_size=batch // world.size)
    path = trainer.export(args.out)
    if trainer.is_main:
        print(f"exported bundle to {path}: {sorted(os.listdir(path))}")
        accuracy = float(np.mean(tvf.load(path).predict(x_test).argmax(axis=1) == y_test))
        print(f"total time {time.perf_counter() - t0:.1f} s")
        print(f"test_accuracy={accuracy:.4f}")


if __name__ == "__main__":
    args = parse_args(__doc__, "artifacts/lenet_digits", epochs=30, flags=[
        ("--distributed", "data-parallel over the MPI ranks of mpiexec (tvf.distributed)")])
    tvf.manual_seed(args.seed)
    model = make_model()
    x_train, y_train, x_test, y_test = tvf.data.load_digits()  # the fixed split
    data = (tvf.data.upsample(x_train, 2), y_train, tvf.data.upsample(x_test, 2), y_test)
    # Step decay: a tenth of the rate for the last third (lr is a runtime input of the step).
    schedule = lambda epoch: 3e-3 if epoch < 2 * args.epochs // 3 else 3e-4  # noqa: E731
    if args.distributed:
        train_distributed(model, data, args, schedule)
    else:
        compile_train_export(model, make_optimizer(), X_SHAPE, data, args, lr_schedule=schedule)
