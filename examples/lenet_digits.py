"""Train a LeNet-style CNN on scikit-learn's digits (upsampled to 16x16), export the
bundle, reload it and evaluate it.

    python examples/lenet_digits.py --out artifacts/lenet_digits
    tvmfront tune examples/lenet_digits.py --budget 64   # tune its modules (tvmfront_modules)
"""

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


if __name__ == "__main__":
    args = parse_args(__doc__, "artifacts/lenet_digits", epochs=30)
    tvf.manual_seed(args.seed)
    model = make_model()
    x_train, y_train, x_test, y_test = tvf.data.load_digits()  # the fixed split
    data = (tvf.data.upsample(x_train, 2), y_train, tvf.data.upsample(x_test, 2), y_test)
    # Step decay: a tenth of the rate for the last third (lr is a runtime input of the step).
    schedule = lambda epoch: 3e-3 if epoch < 2 * args.epochs // 3 else 3e-4  # noqa: E731
    compile_train_export(model, make_optimizer(), X_SHAPE, data, args, lr_schedule=schedule)
