"""Sample text from a bundle exported by examples/char_transformer.py, in a fresh process: one
compiled prefill over the prompt, then one compiled decode step per character, each reading and
appending to the key/value cache (tvf.generate.sample); temperature and top-k sampling.

    python examples/char_generate.py artifacts/char_transformer --prompt "The " --chars 300

Past the model's context the window slides: the last half of the context is prefilled again
and decoding continues from there (the cache holds at most `context` positions).
"""

import argparse
import json
import os
import time

import numpy as np

import tvmfront as tvf

INFER, VOCAB = "infer", "vocab.json"  # the bundle folder's inference module and vocabulary


def context_of(module):
    """The number of positions of the module's key/value cache (decode's k_cache is
    [num_layers, batch, nhead, context, head_dim])."""
    decode = module.manifest.get("methods", {}).get("decode")
    if decode is None:
        raise ValueError("the module has no compiled decode method (export the inference "
                         "module of examples/char_transformer.py)")
    return int({s["name"]: s for s in decode["inputs"]}["k_cache"]["shape"][3])


def generate(module, prompt_ids, n, temperature=0.8, top_k=None, seed=0):
    """`n` sampled ids after `prompt_ids` (int64 [n]), and the milliseconds per generated id.
    The first window is the prompt (its last `context` ids); when the cache is full, the last
    context // 2 ids are prefilled again. Each window samples with its own seed (seed + its
    index), so a seed gives the same text in any process."""
    context = context_of(module)
    history = [int(i) for i in prompt_ids]
    if not history:
        raise ValueError("generate: the prompt must hold at least one character")
    first, keep, start = len(history), context, time.perf_counter()
    for chunk in range(n):
        if len(history) - first >= n:
            break
        window = history[-keep:]
        steps = min(n - (len(history) - first), context - len(window) + 1)  # cache full then
        history += tvf.generate.sample(module, np.array(window, np.int64), steps,
                                       temperature=temperature, top_k=top_k,
                                       seed=seed + chunk).tolist()
        keep = context // 2
    ms = (time.perf_counter() - start) * 1e3 / max(n, 1)
    return np.array(history[first:], np.int64), ms


def load(folder):
    """(inference module, vocabulary) from a folder char_transformer.py exported."""
    with open(os.path.join(folder, VOCAB), encoding="utf-8") as f:
        vocab = json.load(f)
    return tvf.load(os.path.join(folder, INFER)), vocab


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="folder written by examples/char_transformer.py --out")
    p.add_argument("--prompt", default="The ")
    p.add_argument("--chars", type=int, default=300, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    module, vocab = load(args.bundle)
    ids, ms = generate(module, tvf.data.encode(args.prompt, vocab), args.chars,
                       args.temperature, args.top_k, args.seed)
    print(args.prompt + tvf.data.decode(ids, vocab))
    print(f"ms_per_token={ms:.3f}")


if __name__ == "__main__":
    main()
