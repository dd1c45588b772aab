"""Train an MLP on scikit-learn's 8x8 digits, export the bundle, reload it, evaluate.

    python examples/mlp_digits.py --out artifacts/mlp_digits
"""

import tvmfront as tvf
from _common import compile_train_export, parse_args

args = parse_args(__doc__, "artifacts/mlp_digits", epochs=30)
tvf.manual_seed(args.seed)
model = tvf.nn.Sequential(
    tvf.nn.Flatten(),                       # [B, 1, 8, 8] -> [B, 64]
    tvf.nn.Linear(64, 256), tvf.nn.ReLU(),
    tvf.nn.Linear(256, 256), tvf.nn.ReLU(),
    tvf.nn.Linear(256, 10),
)
data = tvf.data.load_digits()  # the fixed split
compile_train_export(model, tvf.optim.Adam(lr=1e-3), (1, 8, 8), data, args)
