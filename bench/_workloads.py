"""The two issue-11 workloads of bench/peers.py (transformer, resnet), described as plain data so
that every worker builds the same model: tvmfront in .venv, PyTorch and JAX in .venv-bench.
Stdlib only at import (the driver, every worker and _chart.py import it); `data` imports numpy,
which every worker's environment has.

The shapes come from the examples when they are there: the driver asks the tvmfront worker
(section "shapes"), which imports examples/char_transformer.py (model_config(vocab_size),
BATCH, CONTEXT, the vocabulary of tvf.data.load_pydoc_text) and examples/resnet_digits.py
(X_SHAPE, BATCH, make_model(), make_optimizer()). Without them the placeholders below are
used and the tables say so.
"""

# ---- transformer: tvf.nn.CausalLM's keyword arguments, plus the train batch and length ------
TRANSFORMER_PLACEHOLDER = {
    "model": {"vocab_size": 96, "context": 128, "d_model": 128, "nhead": 4, "num_layers": 4,
              "dim_feedforward": 512, "dropout": 0.0},
    "batch": 32,   # train batch
    "seq": 128,    # train and inference sequence length (the example's CONTEXT)
    "optimizer": {"name": "AdamW", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                  "weight_decay": 0.01, "max_norm": 1.0},
    "source": "placeholder (examples/char_transformer.py not there)",
}
INFER_BATCHES = [1, 64]


def decode_position(cfg):
    """The one-token decode step is timed at a mid-context position: it writes cache row
    `pos` and attends rows 0..pos."""
    return cfg["model"]["context"] // 2


# ---- resnet: three stages of basic residual blocks with BatchNorm ---------------------------
# stem: conv3x3(in -> stem) BN ReLU; each stage: blocks of [conv3x3(stride) BN ReLU conv3x3 BN]
# plus the shortcut (identity, or conv1x1(stride) BN where the shape changes), add, ReLU;
# the first block of a stage has the stage's stride. Then global average pooling and Linear.
# Convolutions have no bias (BatchNorm follows each).
RESNET_PLACEHOLDER = {
    "x_shape": [1, 32, 32],
    "batch": 64,
    "classes": 10,
    "stem": 16,
    "stages": [[16, 1, 1], [32, 1, 2], [64, 1, 2]],  # [channels, blocks, stride]
    "optimizer": {"name": "AdamW", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                  "weight_decay": 0.01, "max_norm": None},
    "source": "placeholder (examples/resnet_digits.py not there)",
}


def resnet_blocks(cfg):
    """[(c_in, c_out, stride, projection shortcut?)] of every residual block, in order."""
    out, c = [], cfg["stem"]
    for channels, blocks, stride in cfg["stages"]:
        for i in range(blocks):
            s = stride if i == 0 else 1
            out.append((c, channels, s, s != 1 or c != channels))
            c = channels
    return out


def resnet_params(cfg):
    """Trainable parameter count (the check that the peers build the example's model)."""
    c_in = cfg["x_shape"][0]
    n = cfg["stem"] * c_in * 9 + 2 * cfg["stem"]
    for ci, co, _, proj in resnet_blocks(cfg):
        n += co * ci * 9 + 2 * co + co * co * 9 + 2 * co
        if proj:
            n += co * ci + 2 * co
    last = cfg["stages"][-1][0]
    return n + last * cfg["classes"] + cfg["classes"]


def transformer_params(cfg):
    m = cfg["model"]
    v, ctx, e, f, layers = (m["vocab_size"], m["context"], m["d_model"], m["dim_feedforward"],
                            m["num_layers"])
    per_layer = 3 * e * e + 3 * e + e * e + e + e * f + f + f * e + e + 4 * e
    return v * e + ctx * e + layers * per_layer + 2 * e


# ---- FLOPs (multiply-adds x 2) of the GEMMs, convolutions and attention --------------------
def transformer_forward_flops(cfg, batch, seq):
    """One forward over [batch, seq]: the projections, the MLP, the tied head, and attention
    as dense [seq, seq] products (causal masking does not skip the upper half)."""
    m = cfg["model"]
    e, f, v, layers = m["d_model"], m["dim_feedforward"], m["vocab_size"], m["num_layers"]
    tokens = batch * seq
    gemm = tokens * (layers * (2 * e * 3 * e + 2 * e * e + 2 * 2 * e * f) + 2 * e * v)
    attention = layers * batch * 2 * 2 * seq * seq * e
    return gemm + attention


def resnet_forward_flops(cfg, batch):
    hw = cfg["x_shape"][1]
    c_in = cfg["x_shape"][0]
    flops = 2 * cfg["stem"] * c_in * 9 * hw * hw
    for ci, co, s, proj in resnet_blocks(cfg):
        hw_out = (hw + 2 - 3) // s + 1
        flops += 2 * co * ci * 9 * hw_out ** 2 + 2 * co * co * 9 * hw_out ** 2
        if proj:
            flops += 2 * co * ci * hw_out ** 2
        hw = hw_out
    return batch * (flops + 2 * cfg["stages"][-1][0] * cfg["classes"])


def train_flops(forward_flops):
    """A train step's FLOPs: the forward plus a backward of twice as many (the gradients with
    respect to the activations and to the weights), the usual 3x; the update is negligible."""
    return 3 * forward_flops


def data(section, cfg, int_dtype):
    """The inputs every worker times, the same arrays everywhere (seed 0): {"x", "y" (the
    train batch and labels), "infer": {batch: input}}. Token ids and labels in int_dtype."""
    import numpy as np

    rng = np.random.default_rng(0)
    if section == "transformer":
        vocab, seq = cfg["model"]["vocab_size"], cfg["seq"]
        draw = lambda b: rng.integers(0, vocab, (b, seq)).astype(int_dtype)  # noqa: E731
        x, y = draw(cfg["batch"]), draw(cfg["batch"])
    else:
        draw = lambda b: rng.standard_normal((b, *cfg["x_shape"])).astype("float32")  # noqa: E731
        x, y = draw(cfg["batch"]), rng.integers(0, cfg["classes"], cfg["batch"]).astype(int_dtype)
    return {"x": x, "y": y, "infer": {b: draw(b) for b in INFER_BATCHES}}
