"""PyTorch parity over training for examples/char_transformer.py's workload: the same initial
weights in tvf.nn.CausalLM and its PyTorch twin (tests/_torch_char_lm.py, in .venv-bench's
process), dropout 0, a small config, 5 AdamW steps with the example's optimizer (decay groups,
betas, gradient clipping) and learning-rate schedule on the same batches of the pydoc text:
the losses agree within 1e-4 relative at every step and the final parameters within 1e-4
relative (float32)."""

import json
import os
import sys

import numpy as np
import pytest

import tvmfront as tvf
from _torch import run_torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import char_transformer as example  # noqa: E402

STEPS, B = 5, 4
CONFIG = dict(context=16, d_model=32, nhead=4, num_layers=2, dim_feedforward=64, dropout=0.0)
MAX_NORM = 0.5  # below the first steps' gradient norms, so clipping scales every step


def _setup():
    """(model, optimizer, learning rates, batches): the example's optimizer and schedule (over
    a run of 20 steps, so the 5 steps cover warmup and the start of the decay)."""
    text, _, _ = tvf.data.load_pydoc_text()
    vocab = tvf.data.char_vocab(text)
    train_ids, _ = example.split(tvf.data.encode(text, vocab))
    rng = np.random.default_rng(0)
    batches = [tvf.data.lm_windows(train_ids, B, CONFIG["context"], rng) for _ in range(STEPS)]
    tvf.manual_seed(0)
    model = tvf.nn.CausalLM(len(vocab), **CONFIG)
    schedule = example.lr_schedule(20)
    return model, example.make_optimizer(), [schedule(t) for t in range(STEPS)], batches


@pytest.mark.slow
def test_char_lm_training_matches_pytorch(request, tmp_path):
    model, optimizer, lrs, batches = _setup()
    names = list(model.state_dict())
    decay = optimizer.groups.setting("weight_decay")
    case = dict(config=dict(vocab_size=model.vocab_size, **CONFIG),
                adamw=dict(betas=optimizer.hyperparameters["betas"],
                           eps=optimizer.hyperparameters["eps"],
                           weight_decay=optimizer.hyperparameters["weight_decay"]),
                no_decay=[n for n in names if decay(n) == 0.0], lrs=lrs, max_norm=MAX_NORM)
    arrays = {f"s.{k}": v for k, v in model.state_dict().items()}
    for t, (x, y) in enumerate(batches):
        arrays[f"x{t}"], arrays[f"y{t}"] = x, y
    want = run_torch(request, "character-level CausalLM training parity with PyTorch",
                     "_torch_char_lm.py", tmp_path, case=np.array(json.dumps(case)), **arrays)

    assert {"blocks.0.norm1.weight", "ln_f.bias", "blocks.1.linear1.bias"} <= \
        set(case["no_decay"]) and "blocks.0.linear1.weight" not in case["no_decay"]
    assert (want["norms"] > MAX_NORM).all(), want["norms"]  # clipping acts at every step
    ids = tvf.TensorSpec((B, CONFIG["context"]), "int64")
    m = tvf.compile_training(model, tvf.nn.CrossEntropyLoss(), optimizer, inputs=ids,
                             labels=ids)
    losses = [m.step(x, y, lr=lr, max_norm=MAX_NORM) for (x, y), lr in zip(batches, lrs)]
    np.testing.assert_allclose(losses, want["losses"], rtol=1e-4, atol=0)
    assert losses[-1] < losses[0]  # it trains
    state = m.state_dict()
    assert sorted(state) == sorted(k[2:] for k in want if k.startswith("s."))
    e = CONFIG["d_model"]
    for n, value in state.items():
        ref = want["s." + n].copy()
        if n.endswith("self_attn.in_proj_bias"):
            # the key bias has a true gradient of exactly zero (softmax ignores a shift common
            # to a query's scores): AdamW turns each side's rounding noise into steps of up to
            # lr, so those entries agree with nothing (tests/test_parity_adamw.py)
            ref[e:2 * e] = value[e:2 * e]
        np.testing.assert_allclose(value, ref, rtol=1e-4,
                                   atol=1e-4 * float(np.abs(ref).max()),
                                   err_msg=f"{n} after {STEPS} AdamW steps")
