"""Train a character-level Transformer language model (tvf.nn.CausalLM: GPT-style, pre-norm,
weight-tied head) on the Python reference documentation that ships with CPython
(pydoc_data.topics), report validation bits per character, export the bundle and sample text
from it with a key/value cache (a compiled prefill, then one compiled decode step per token).

    python examples/char_transformer.py --out artifacts/char_transformer
    python examples/char_generate.py artifacts/char_transformer --prompt "The " --chars 300
    tvmfront tune examples/char_transformer.py --budget 64   # tune its modules (tvmfront_modules)

The text is split 90/10 by position: training batches are windows at random positions of the
first 90%; validation bits per character are the mean cross entropy (nats / ln 2) over every
position of the last 10%, cut into windows of CONTEXT characters. AdamW with linear warmup and
cosine decay, gradient clipping at global norm MAX_NORM. The bundle folder holds `train/`
(the training module: continue with tvf.load), `infer/` (forward, prefill, decode) and
`vocab.json`.
"""

import argparse
import json
import math
import os
import time

import numpy as np

import tvmfront as tvf
from _common import use_every_core
from char_generate import INFER, VOCAB, generate

use_every_core()  # 14.0k training tokens/s with 2 threads, 9.3k with 1 (idle 2-core AVX2)

BATCH = 16           # windows per training step
CONTEXT = 64         # characters per window (and the model's context)
STEPS = 2500         # optimizer steps of the full run (sized to finish in < 6 min on 2 cores)
LR = 5e-3            # peak learning rate
WARMUP = 100         # linear warmup steps, then cosine decay to LR * FINAL_LR
FINAL_LR = 0.1
WEIGHT_DECAY = 0.1   # decoupled (AdamW), on matrices only: not on biases and LayerNorm
MAX_NORM = 1.0       # global gradient-norm clipping
# The layers take dropout (--dropout), off by default: at 1.5M training characters (3.6 passes
# over the text) the 0.4M-parameter model was underfit (validation tracked training); at 2.6M
# (6 passes) the last steps' training loss is 1.66 bpc against 1.82 on validation, a gap that
# dropout might narrow, at ~1.2x the step's time with dropout 0.1 at every site (Philox masks).
DROPOUT = 0.0
PROMPT = "The "
SAMPLE_CHARS = 300


def model_config(vocab_size):
    """The nn.CausalLM keyword arguments the example trains with."""
    return dict(vocab_size=vocab_size, context=CONTEXT, d_model=128, nhead=4, num_layers=2,
                dim_feedforward=512, dropout=DROPOUT)


def make_optimizer():
    return tvf.optim.AdamW(lr=LR, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY,
                           max_norm=MAX_NORM,
                           groups=[{"params": ["*.bias", "*norm*.weight", "ln_f.weight"],
                                    "weight_decay": 0.0}])


def lr_schedule(steps):
    """Warmup over min(WARMUP, steps // 10) steps, then cosine decay to LR * FINAL_LR."""
    s = tvf.optim.schedules
    warmup = max(1, min(WARMUP, steps // 10))
    return s.warmup(warmup, s.cosine(LR, max(1, steps - warmup), final=LR * FINAL_LR))


def tvmfront_modules(target="x86"):
    """What `tvmfront tune examples/char_transformer.py` tunes: the train step and the
    generation module (forward, prefill and the one-token decode step at batch 1)."""
    vocab = tvf.data.char_vocab(tvf.data.load_pydoc_text()[0])
    tvf.manual_seed(0)
    model = tvf.nn.CausalLM(**model_config(len(vocab)))
    return {"train": compile_train_step(model, target),
            "generate": compile_generator(model, target)}


def compile_train_step(model, target):
    """The train step: BATCH windows of CONTEXT characters, next-character cross entropy."""
    ids = tvf.TensorSpec((BATCH, CONTEXT), "int64")
    return tvf.compile_training(model, tvf.nn.CrossEntropyLoss(), make_optimizer(), inputs=ids,
                                labels=ids, target=target)


def compile_generator(model, target):
    """Forward (any batch and length), prefill and the one-token decode step over a key/value
    cache, in one inference module."""
    return tvf.compile_inference(model, tvf.TensorSpec(("batch", "seq"), "int64"),
                                 methods={"prefill": model.prefill_spec(),
                                          "decode": model.decode_spec()}, target=target)


def split(ids):
    """90/10 by position: (train ids, validation ids)."""
    cut = int(len(ids) * 0.9)
    return ids[:cut], ids[cut:]


def bits_per_char(module, ids, context):
    """Mean cross entropy in bits over every next-character prediction of `ids`, cut into
    consecutive windows of `context` characters (eval mode: no dropout)."""
    n = (len(ids) - 1) // context
    x = ids[:n * context].reshape(n, context)
    y = ids[1:n * context + 1].reshape(n, context)
    logits = module.predict(x).astype(np.float64)                     # [n, T, V]
    top = logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]     # [n, T]
    picked = np.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    return float((log_z - picked).mean() / math.log(2))


def train(module, train_ids, steps, seed, every):
    """`steps` AdamW steps on random windows; prints progress; returns tokens/s."""
    schedule, rng = lr_schedule(steps), np.random.default_rng(seed)
    start, running = time.perf_counter(), []
    for t in range(steps):
        x, y = tvf.data.lm_windows(train_ids, BATCH, CONTEXT, rng)
        lr = schedule(t)
        loss = module.step(x, y, lr=lr)
        if not math.isfinite(loss):
            raise tvf.NonFiniteLossError(f"loss {loss} at step {t + 1}", epoch=1, step=t + 1)
        running.append(loss)
        if (t + 1) % every == 0 or t + 1 == steps:
            seconds = time.perf_counter() - start
            print(f"step {t + 1}/{steps} loss={np.mean(running):.4f} "
                  f"({np.mean(running) / math.log(2):.3f} bpc) lr={lr:.2e} "
                  f"tokens_per_s={(t + 1) * BATCH * CONTEXT / seconds:.0f} "
                  f"elapsed={seconds:.0f}s", flush=True)
            running = []
    return steps * BATCH * CONTEXT / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="artifacts/char_transformer", help="bundle folder")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 20 steps, validation on the first 4096 held-out "
                        "characters, a 40-character sample")
    p.add_argument("--dropout", type=float, default=DROPOUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", default="x86")
    args = p.parse_args()
    if args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    steps = 20 if args.quick else args.steps
    t0 = time.perf_counter()

    text, sha, nbytes = tvf.data.load_pydoc_text()
    vocab = tvf.data.char_vocab(text)
    print(f"text: pydoc_data.topics, {nbytes} bytes ({len(text)} characters, "
          f"{len(vocab)} distinct), sha256={sha}")
    train_ids, val_ids = split(tvf.data.encode(text, vocab))
    if args.quick:
        val_ids = val_ids[:4097]
    print(f"split 90/10 by position: {len(train_ids)} training, {len(val_ids)} validation "
          f"characters")

    tvf.manual_seed(args.seed)
    model = tvf.nn.CausalLM(**dict(model_config(len(vocab)), dropout=args.dropout))
    t1 = time.perf_counter()
    module = compile_train_step(model, args.target)
    n_params = sum(v.size for v in module.state_dict().values())
    print(f"{model!r}\n{n_params} parameters; compiled the train step in "
          f"{time.perf_counter() - t1:.1f} s (compile cache: {module.build_info['cache']})",
          flush=True)

    tokens_per_s = train(module, train_ids, steps, args.seed, every=max(1, steps // 20))
    bpc = bits_per_char(module, val_ids, CONTEXT)
    print(f"validation: {bpc:.4f} bits per character (unigram baseline "
          f"{_unigram_bpc(train_ids, val_ids, len(vocab)):.2f}); training {tokens_per_s:.0f} "
          f"tokens/s")

    t1 = time.perf_counter()
    gen = compile_generator(model, args.target)
    gen.load_state_dict(module.state_dict())
    print(f"compiled forward, prefill and decode in {time.perf_counter() - t1:.1f} s")
    module.export(os.path.join(args.out, "train"))
    gen.export(os.path.join(args.out, INFER))
    tmp = os.path.join(args.out, f".{VOCAB}.{os.getpid()}.tmp")  # atomic: no half-written vocab
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    os.replace(tmp, os.path.join(args.out, VOCAB))
    print(f"exported {args.out}: {sorted(os.listdir(args.out))}")

    reloaded = tvf.load(os.path.join(args.out, INFER))
    chars = 40 if args.quick else SAMPLE_CHARS
    sample, ms = generate(reloaded, tvf.data.encode(PROMPT, vocab), chars, temperature=0.8)
    print(f"sample ({chars} characters from the reloaded bundle, temperature 0.8, "
          f"{ms:.2f} ms/token):\n{PROMPT}{tvf.data.decode(sample, vocab)}")
    print(f"total time {time.perf_counter() - t0:.1f} s (process CPU time "
          f"{time.process_time():.1f} s)")
    print(f"val_bpc={bpc:.4f}")


def _unigram_bpc(train_ids, val_ids, vocab_size):
    """Bits per character of the training text's character frequencies (add-one smoothed) on
    the validation text: what a model that ignores context reaches."""
    counts = np.bincount(train_ids, minlength=vocab_size) + 1.0
    return float(-np.log2(counts / counts.sum())[val_ids].mean())


if __name__ == "__main__":
    main()
