"""JAX models of bench/peers.py's transformer and resnet sections, as pure functions over
parameter pytrees (runs in .venv-bench; no flax/optax: the same layers and PyTorch's update
rules written out), built from bench/_workloads.py's configuration."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from _workloads import resnet_blocks


def _uniform(key, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _linear(key, n_in, n_out):
    k1, k2 = jax.random.split(key)
    return {"w": _uniform(k1, (n_out, n_in), n_in), "b": _uniform(k2, (n_out,), n_in)}


def _dense(p, x):
    return x @ p["w"].T + p["b"]


def _layer_norm(p, x, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["g"] + p["b"]


def _norm(e):
    return {"g": jnp.ones((e,), jnp.float32), "b": jnp.zeros((e,), jnp.float32)}


# ---- transformer ------------------------------------------------------------------------------
def causal_lm_init(key, vocab_size, context, d_model, nhead, num_layers, dim_feedforward,
                   dropout=0.0):
    keys = jax.random.split(key, 2 + num_layers)
    e, f = d_model, dim_feedforward
    layers = []
    for k in keys[2:]:
        k1, k2, k3, k4 = jax.random.split(k, 4)
        layers.append({"ln1": _norm(e), "qkv": _linear(k1, e, 3 * e), "out": _linear(k2, e, e),
                       "ln2": _norm(e), "ff1": _linear(k3, e, f), "ff2": _linear(k4, f, e)})
    return {"tok": jax.random.normal(keys[0], (vocab_size, e), jnp.float32),
            "pos": jax.random.normal(keys[1], (context, e), jnp.float32),
            "layers": layers, "ln_f": _norm(e)}


def _heads(x, nhead):  # [B, T, E] -> [B, H, T, hd]
    b, t, e = x.shape
    return x.reshape(b, t, nhead, e // nhead).transpose(0, 2, 1, 3)


def _mlp(layer, x):
    return _dense(layer["ff2"], jax.nn.gelu(_dense(layer["ff1"], _layer_norm(layer["ln2"], x)),
                                            approximate=False))


def causal_lm_apply(p, idx, nhead):
    """idx [B, T] -> logits [B, T, V]: pre-norm blocks, causal attention, tied head."""
    b, t = idx.shape
    x = p["tok"][idx] + p["pos"][:t]
    causal = jnp.tril(jnp.ones((t, t), bool))
    for layer in p["layers"]:
        q, k, v = jnp.split(_dense(layer["qkv"], _layer_norm(layer["ln1"], x)), 3, axis=-1)
        q, k, v = _heads(q, nhead), _heads(k, nhead), _heads(v, nhead)
        scores = jnp.where(causal, q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]),
                           -jnp.inf)
        y = (jax.nn.softmax(scores, -1) @ v).transpose(0, 2, 1, 3).reshape(b, t, -1)
        x = x + _dense(layer["out"], y)
        x = x + _mlp(layer, x)
    return _layer_norm(p["ln_f"], x) @ p["tok"].T


def causal_lm_decode(p, token, pos, k_cache, v_cache, nhead):
    """One token [B, 1] at position `pos` (a traced int32): its key and value written into
    row `pos` of the preallocated caches [L, B, H, context, hd] by lax.dynamic_update_slice,
    attention over rows 0..pos (a mask over the fixed-size cache: one compiled step for every
    position). Returns (logits [B, V], k_cache, v_cache)."""
    b = token.shape[0]
    context = k_cache.shape[3]
    x = p["tok"][token] + jax.lax.dynamic_slice_in_dim(p["pos"], pos, 1)     # [B, 1, E]
    visible = jnp.arange(context) <= pos
    zero = jnp.int32(0)
    for i, layer in enumerate(p["layers"]):
        q, k, v = jnp.split(_dense(layer["qkv"], _layer_norm(layer["ln1"], x)), 3, axis=-1)
        q, k, v = _heads(q, nhead), _heads(k, nhead), _heads(v, nhead)      # [B, H, 1, hd]
        at = (jnp.int32(i), zero, zero, pos, zero)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k[None], at)
        v_cache = jax.lax.dynamic_update_slice(v_cache, v[None], at)
        scores = q @ k_cache[i].transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])  # [B, H, 1, C]
        scores = jnp.where(visible, scores, -jnp.inf)
        y = (jax.nn.softmax(scores, -1) @ v_cache[i]).transpose(0, 2, 1, 3).reshape(b, 1, -1)
        x = x + _dense(layer["out"], y)
        x = x + _mlp(layer, x)
    return _layer_norm(p["ln_f"], x[:, 0]) @ p["tok"].T, k_cache, v_cache


# ---- resnet -----------------------------------------------------------------------------------
def _conv_w(key, c_in, c_out, k):
    return _uniform(key, (c_out, c_in, k, k), c_in * k * k)


def _bn_state(c):
    return {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}


def resnet_init(key, cfg):
    """(params, BatchNorm running statistics)."""
    blocks = resnet_blocks(cfg)
    keys = jax.random.split(key, 2 + len(blocks))
    params = {"stem": {"w": _conv_w(keys[0], cfg["x_shape"][0], cfg["stem"], 3),
                       "bn": _norm(cfg["stem"])}, "blocks": []}
    stats = {"stem": _bn_state(cfg["stem"]), "blocks": []}
    for k, (ci, co, _, proj) in zip(keys[2:], blocks):
        k1, k2, k3 = jax.random.split(k, 3)
        bp = {"w1": _conv_w(k1, ci, co, 3), "bn1": _norm(co), "w2": _conv_w(k2, co, co, 3),
              "bn2": _norm(co)}
        bs = {"bn1": _bn_state(co), "bn2": _bn_state(co)}
        if proj:
            bp.update(wp=_conv_w(k3, ci, co, 1), bnp=_norm(co))
            bs["bnp"] = _bn_state(co)
        params["blocks"].append(bp)
        stats["blocks"].append(bs)
    params["fc"] = _linear(keys[1], cfg["stages"][-1][0], cfg["classes"])
    return params, stats


def _conv(x, w, stride):
    pad = w.shape[-1] // 2
    return jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))


def _batch_norm(p, s, x, train, momentum=0.1, eps=1e-5):
    """(y, new running stats): batch statistics in training (running ones updated as PyTorch
    does, with the unbiased variance), the running ones in eval."""
    if train:
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
        n = x.size / x.shape[1]
        s = {"mean": (1 - momentum) * s["mean"] + momentum * mean,
             "var": (1 - momentum) * s["var"] + momentum * var * n / (n - 1)}
    else:
        mean, var = s["mean"], s["var"]
    inv = p["g"] / jnp.sqrt(var + eps)
    return (x - mean[:, None, None]) * inv[:, None, None] + p["b"][:, None, None], s


def resnet_apply(params, stats, x, cfg, train):
    """(logits, new running stats)."""
    new = {"blocks": []}
    x, new["stem"] = _batch_norm(params["stem"]["bn"], stats["stem"],
                                 _conv(x, params["stem"]["w"], 1), train)
    x = jax.nn.relu(x)
    for (_, _, stride, proj), bp, bs in zip(resnet_blocks(cfg), params["blocks"],
                                            stats["blocks"]):
        ns = {}
        y, ns["bn1"] = _batch_norm(bp["bn1"], bs["bn1"], _conv(x, bp["w1"], stride), train)
        y, ns["bn2"] = _batch_norm(bp["bn2"], bs["bn2"], _conv(jax.nn.relu(y), bp["w2"], 1),
                                   train)
        if proj:
            x, ns["bnp"] = _batch_norm(bp["bnp"], bs["bnp"], _conv(x, bp["wp"], stride), train)
        x = jax.nn.relu(y + x)
        new["blocks"].append(ns)
    return _dense(params["fc"], x.mean((2, 3))), new


# ---- loss and optimizer -----------------------------------------------------------------------
def cross_entropy(logits, y):
    """Mean over every position: logits [..., C], labels [...]."""
    logp = jax.nn.log_softmax(logits.reshape(-1, logits.shape[-1]))
    return -jnp.mean(jnp.take_along_axis(logp, y.reshape(-1, 1), axis=1))


def adam_init(params):
    zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731
    return {"m": zeros(), "v": zeros()}  # two trees: donated buffers must be distinct


def adam_update(params, grads, state, t, o):
    """torch.optim.Adam / AdamW (decoupled decay for AdamW, L2 for Adam), after clipping the
    gradients to the global norm o["max_norm"] when set (clip_grad_norm_)."""
    tm = jax.tree_util.tree_map
    if o.get("max_norm"):
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
        grads = tm(lambda g: g * jnp.minimum(1.0, o["max_norm"] / (norm + 1e-6)), grads)
    lr, (b1, b2), eps, wd = o["lr"], o.get("betas", (0.9, 0.999)), o.get("eps", 1e-8), \
        o.get("weight_decay") or 0.0
    if o["name"] == "AdamW":
        params = tm(lambda p: p * (1 - lr * wd), params)
    elif wd:
        grads = tm(lambda g, p: g + wd * p, grads, params)
    m = tm(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
    v = tm(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
    c1, c2 = 1 - b1 ** t, 1 - b2 ** t
    params = tm(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), params, m, v)
    return params, {"m": m, "v": v}


def param_count(params):
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
