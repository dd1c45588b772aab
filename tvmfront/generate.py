"""Sampling text from a compiled causal language model with a key/value cache.

The module (compile_inference of an nn.CausalLM with methods prefill and decode, or its
exported bundle loaded with tvf.load in any process) runs one prefill over the prompt, then
one decode step per new token; sampling (temperature, top-k) happens here, in numpy.

>>> gen = tvf.compile_inference(model, tvf.Spec(("batch", "seq"), "int64"),
...     methods={"prefill": model.prefill_spec(), "decode": model.decode_spec()})
>>> ids = tvf.generate.sample(gen, [5, 17, 3], steps=100, temperature=0.8, top_k=10)
"""

import numbers

import numpy as np

from ._checks import is_whole
from ._tvm import to_device, to_numpy


def _cache_spec(module):
    """(context, batch dimension of the cache spec: an int or a name, vocabulary size) from
    the module's decode method, whose k_cache is [num_layers, batch, nhead, context,
    head_dim] and whose first output is the logits [batch, vocab]."""
    methods = getattr(module, "manifest", {}).get("methods", {})
    missing = [m for m in ("prefill", "decode") if m not in methods]
    if missing:
        raise ValueError(f"sample: the module has no compiled {' and '.join(missing)} (compile "
                         f"an nn.CausalLM with methods={{'prefill': model.prefill_spec(), "
                         f"'decode': model.decode_spec()}}); it has {sorted(methods) or 'none'}")
    inputs = {s["name"]: s for s in methods["decode"]["inputs"]}
    if "k_cache" not in inputs or len(inputs["k_cache"]["shape"]) != 5:
        raise ValueError("sample: the decode method must take k_cache [num_layers, batch, "
                         "nhead, context, head_dim]")
    shape = inputs["k_cache"]["shape"]
    return int(shape[3]), shape[1], int(methods["decode"]["outputs"][0]["shape"][-1])


def _prompt(prompt_ids):
    prompt = np.asarray(prompt_ids)
    if prompt.dtype.kind not in "iu" and not (prompt.size == 0 and prompt.dtype.kind == "f"):
        raise TypeError(f"sample: prompt_ids must be integer token ids, got {prompt.dtype}")
    if prompt.ndim not in (1, 2) or prompt.shape[-1] == 0 or prompt.size == 0:
        raise ValueError(f"sample: prompt_ids must be [T] or [B, T] with T >= 1, got shape "
                         f"{prompt.shape}")
    return prompt.astype(np.int64).reshape(-1, prompt.shape[-1]), prompt.ndim == 1


def _check_options(steps, temperature, top_k, vocab):
    if not is_whole(steps, least=0):
        raise ValueError(f"sample: steps must be an int >= 0, got {steps!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not temperature > 0 or not np.isfinite(temperature):
        raise ValueError(f"sample: temperature must be a finite number > 0, got {temperature!r} "
                         f"(for greedy decoding use top_k=1)")
    if top_k is not None and not is_whole(top_k, 1, vocab):
        raise ValueError(f"sample: top_k must be None or an int in 1..{vocab} (the vocabulary), "
                         f"got {top_k!r}")


def next_token(logits, temperature=1.0, top_k=None, rng=None):
    """One token per row of logits [B, V] (one int for logits [V], as torch.multinomial takes
    both): top_k=1 is argmax (greedy, the first of ties); otherwise a draw from
    softmax(logits / temperature) restricted to the top_k largest logits (all when None; ties
    at the k-th value are all kept). rng: a numpy Generator; None draws from a fresh one
    (np.random.default_rng())."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim == 1:  # a bare IndexError below had met them
        return int(next_token(logits[None], temperature, top_k, rng)[0])
    if logits.ndim != 2 or not logits.shape[-1]:
        raise ValueError(f"next_token: logits must be [batch, vocabulary] or [vocabulary], got "
                         f"shape {logits.shape}")
    rng = np.random.default_rng() if rng is None else rng  # None had been an AttributeError
    # NaN (a diverged model) and +inf had drawn token 0 with no error; torch.multinomial
    # refuses them. -inf is a mask: that token has no mass.
    bad = np.isnan(logits) | np.isposinf(logits)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"next_token: the logits are {logits[row, col]} at row {row}, id {col}: "
                         "the model's output is not finite")
    if top_k == 1:
        return logits.argmax(axis=-1)
    with np.errstate(over="ignore"):  # a tiny temperature: refused below, naming it
        z = logits / temperature
    top = z.max(axis=-1)
    if not np.isfinite(top).all():
        row = int(np.argmax(~np.isfinite(top)))
        why = "every logit is -inf" if np.isneginf(logits[row]).all() else \
            f"temperature {temperature} overflows it"
        raise ValueError(f"next_token: row {row} has no finite logit / temperature ({why})")
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    cdf = np.cumsum(p, axis=-1)
    u = rng.random((len(z), 1)) * cdf[:, -1:]
    # the first id whose cumulative mass exceeds u (ids of zero mass are never picked)
    return np.minimum((cdf <= u).sum(axis=-1), z.shape[-1] - 1)


def sample(module, prompt_ids, steps, temperature=1.0, top_k=None, seed=0):
    """`steps` new token ids after `prompt_ids` ([T], or [B, T] for B prompts of one length),
    int64 [steps] (or [B, steps]), the prompt not included. One prefill over the prompt, then
    one decode step per token after the first; sampling as next_token, from
    numpy.random.default_rng(seed) (the same seed gives the same ids, in any process).

    The prompt and the tokens fed back must fit the context: T + steps - 1 <= context (the
    last token sampled is never fed back)."""
    context, batch_dim, vocab = _cache_spec(module)
    prompt, single = _prompt(prompt_ids)
    _check_options(steps, temperature, top_k, vocab)
    b, t = prompt.shape
    if prompt.min() < 0 or prompt.max() >= vocab:
        # the compiled prefill refuses them too, naming a position in the batch; this names
        # the vocabulary
        bad = prompt[(prompt < 0) | (prompt >= vocab)]
        raise ValueError(f"sample: prompt_ids must be token ids in 0..{vocab - 1} (the "
                         f"vocabulary), got {int(bad[0])}")
    if isinstance(batch_dim, int) and b != batch_dim:
        raise ValueError(f"sample: the module's cache is compiled for batch {batch_dim}, got "
                         f"{b} prompts")
    if t > context:
        raise ValueError(f"sample: the prompt has {t} tokens, more than the context of "
                         f"{context}")
    if t + steps - 1 > context:
        raise ValueError(f"sample: a prompt of {t} tokens and {steps} steps need "
                         f"{t + steps - 1} positions, more than the context of {context} "
                         f"(at most {context - t + 1} steps after this prompt)")
    if steps == 0:
        return np.zeros((b, 0) if not single else (0,), np.int64)
    # The caches stay device tensors from one step to the next (call_tensors): only the
    # logits come back to numpy (two host copies of the caches a step cost ~0.7 ms at
    # context 128, more than the step itself).
    logits, k_cache, v_cache = module.call_tensors("prefill", prompt)
    token, pos = _step_inputs(module, b)
    rng = np.random.default_rng(seed)
    out = np.zeros((b, steps), np.int64)
    for i in range(steps):
        out[:, i] = next_token(to_numpy(logits), temperature, top_k, rng)
        if i + 1 < steps:
            token[1][...] = out[:, i:i + 1]
            pos[1][...] = t + i
            logits, k_cache, v_cache = module.call_tensors("decode", token[0], pos[0],
                                                           k_cache, v_cache)
    return out[0] if single else out


def _step_inputs(module, batch):
    """(tensor, numpy view) for the decode step's token [batch, 1] and pos, made once and
    refilled each step (a new device tensor and its checks cost more than the copy). The step
    only reads them; off the CPU the view is a numpy array converted at each call."""
    specs = module.manifest["methods"]["decode"]["inputs"]  # token, pos, k_cache, v_cache
    made = []
    for spec, shape in zip(specs, ((batch, 1), ())):
        array = np.zeros(shape, spec["dtype"])
        if module.device.dlpack_device_type() != 1:  # not the host CPU: no shared view
            made.append((array, array))
            continue
        tensor = to_device(array, module.device)
        made.append((tensor, np.from_dlpack(tensor)))
    return made
