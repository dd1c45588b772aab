"""Shared by the digits examples: argument parsing and the export -> reload -> evaluate tail."""

import argparse
import os
import time

import numpy as np

import tvmfront as tvf


def use_every_core():
    """Every CPU this process may use for TVM's thread pool, unless TVM_NUM_THREADS is set
    (TVM alone takes half the logical CPUs on x86: 1 of 2). Call before the first kernel runs.
    The conv and Transformer examples gain from it; the digits MLP and LeNet do not (their
    kernels are too small: LeNet's step is ~14% slower with 2 threads than with 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ.setdefault("TVM_NUM_THREADS", str(cpus or 1))


def parse_args(description, default_out, epochs, flags=()):
    """The digits examples' shared arguments; flags: (name, help) pairs of an example's own
    on/off switches, e.g. ("--distributed", "...")."""
    p = argparse.ArgumentParser(description=description)
    for name, help_text in flags:
        p.add_argument(name, action="store_true", help=help_text)
    p.add_argument("--out", default=default_out, help="bundle directory to export to")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--target", default="x86")
    p.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    return p.parse_args()


def compile_train_export(model, optimizer, x_shape, data, args, lr_schedule=None):
    """Compile, fit with validation, export, reload the bundle, print test accuracy."""
    x_train, y_train, x_test, y_test = data
    batch = 64
    t0 = time.perf_counter()
    module = tvf.compile_training(model, tvf.nn.CrossEntropyLoss(), optimizer,
                                  inputs=(batch, *x_shape), labels=(batch,), target=args.target)
    info = module.build_info
    print(f"compiled train step for {args.target} in {time.perf_counter() - t0:.1f} s "
          f"(compile cache: {info['cache']}; {info['tuned_kernels']} kernels from tuning records "
          f"{', '.join(info['records']) or '(none for ' + info['records_key'] + ')'})")
    trainer = tvf.Trainer(module, seed=args.seed, lr_schedule=lr_schedule)
    trainer.fit(x_train, y_train, epochs=args.epochs, val=(x_test, y_test))
    path = module.export(args.out)
    print(f"exported bundle to {path}: {sorted(os.listdir(path))}")
    reloaded = tvf.load(path)
    accuracy = float(np.mean(reloaded.predict(x_test).argmax(axis=1) == y_test))
    print(f"total time {time.perf_counter() - t0:.1f} s")
    print(f"test_accuracy={accuracy:.4f}")
    return accuracy


def tuning_modules(make_model, optimizer, x_shape, target):
    """What `tvmfront tune` tunes for a digits example (its tvmfront_modules): the train step
    at batch 64 and inference at batch 1 and 64, all from one seeded model."""
    tvf.manual_seed(0)
    model = make_model()
    return {
        "train_b64": tvf.compile_training(model, tvf.nn.CrossEntropyLoss(), optimizer,
                                          inputs=(64, *x_shape), labels=(64,), target=target),
        "infer_b1": tvf.compile_inference(model, inputs=(1, *x_shape), target=target),
        "infer_b64": tvf.compile_inference(model, inputs=(64, *x_shape), target=target),
    }
