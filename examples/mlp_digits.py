"""Train an MLP on scikit-learn's 8x8 digits, export the bundle, reload it, evaluate.

    python examples/mlp_digits.py --out artifacts/mlp_digits
    tvmfront tune examples/mlp_digits.py --budget 64     # tune its modules (tvmfront_modules)
"""

import tvmfront as tvf
from _common import compile_train_export, parse_args, tuning_modules

X_SHAPE = (1, 8, 8)


def make_model():
    return tvf.nn.Sequential(
        tvf.nn.Flatten(),                       # [B, 1, 8, 8] -> [B, 64]
        tvf.nn.Linear(64, 256), tvf.nn.ReLU(),
        tvf.nn.Linear(256, 256), tvf.nn.ReLU(),
        tvf.nn.Linear(256, 10),
    )


def make_optimizer():
    return tvf.optim.Adam(lr=1e-3)


def tvmfront_modules(target="x86"):
    """What `tvmfront tune` tunes: the train step at batch 64, inference at batch 1 and 64."""
    return tuning_modules(make_model, make_optimizer(), X_SHAPE, target)


if __name__ == "__main__":
    args = parse_args(__doc__, "artifacts/mlp_digits", epochs=30)
    tvf.manual_seed(args.seed)
    model = make_model()
    data = tvf.data.load_digits()  # the fixed split
    compile_train_export(model, make_optimizer(), X_SHAPE, data, args)
