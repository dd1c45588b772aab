"""tvmfront models of bench/peers.py's transformer and resnet sections (runs in .venv).

The examples' own models when they are there (examples/char_transformer.py with
tvf.nn.CausalLM, examples/resnet_digits.py's make_model()); otherwise stand-ins of the same
architecture built from tvf.nn, with the shapes of bench/_workloads.py.
"""

import importlib
import os
import sys

import numpy as np

import tvmfront as tvf
from _workloads import (RESNET_PLACEHOLDER, TRANSFORMER_PLACEHOLDER, resnet_blocks,
                        resnet_params, transformer_params)

nn, ops = tvf.nn, tvf.ops
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))


def _example(name):
    """The example module, or None where it is not in this tree yet."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        return None


# ---- transformer ------------------------------------------------------------------------------
class StandInCausalLM(nn.Module):
    """tvf.nn.CausalLM's forward (token + learned position embedding, pre-norm GELU encoder
    layers with causal attention, final LayerNorm, head tied to the token embedding), for
    trees without it. No KV cache: its decode step reads n/a."""

    def __init__(self, vocab_size, context, d_model, nhead, num_layers, dim_feedforward,
                 dropout=0.0):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(num_layers)])
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, idx):
        t = idx.shape[1]
        x = ops.add(self.tok_emb(idx), ops.strided_slice(self.pos_emb.weight, slices=((0, t, 1),)))
        for block in self.blocks:
            x = block(x, is_causal=True)
        b, t, e = x.shape  # the head as one [B*T, E] GEMM (a 2-D dense has the GEMM schedule)
        logits = ops.dense(ops.reshape(self.ln_f(x), shape=(b * t, e)), self.tok_emb.weight)
        return ops.reshape(logits, shape=(b, t, self.tok_emb.num_embeddings))


def transformer_shapes():
    """The section's configuration (see _workloads.TRANSFORMER_PLACEHOLDER) from
    examples/char_transformer.py and the pydoc text's vocabulary, else the placeholder."""
    ex = _example("char_transformer")
    if ex is None:
        cfg = dict(TRANSFORMER_PLACEHOLDER)
    else:
        text = tvf.data.load_pydoc_text()[0]
        model = dict(ex.model_config(len(tvf.data.char_vocab(text))), dropout=0.0)
        cfg = dict(TRANSFORMER_PLACEHOLDER, model=model, batch=ex.BATCH, seq=ex.CONTEXT,
                   optimizer=_optimizer_of(ex, TRANSFORMER_PLACEHOLDER["optimizer"]),
                   source="examples/char_transformer.py")
    cfg["params"] = transformer_params(cfg)
    return cfg


def _optimizer_of(ex, default):
    """The peers' description of the example's make_optimizer() (name, lr, betas, eps,
    weight_decay, max_norm; its parameter groups, e.g. no decay on biases, are left out: the
    same work per step)."""
    if not hasattr(ex, "make_optimizer"):
        return default
    o = ex.make_optimizer()
    hyper = {k: v for k, v in o.hyperparameters.items()
             if k in ("betas", "eps", "weight_decay", "max_norm")}
    return dict(default, name=o.name, lr=o.lr, **hyper)


def causal_lm(cfg):
    """(model, has a KV cache): tvf.nn.CausalLM where it exists, else the stand-in."""
    cls = getattr(nn, "CausalLM", None)
    model = (cls or StandInCausalLM)(**cfg["model"])
    return model, cls is not None


# ---- resnet -----------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, projection):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(c_out)) if projection else None

    def forward(self, x):
        y = self.bn2(self.conv2(ops.relu(self.bn1(self.conv1(x)))))
        return ops.relu(ops.add(y, self.shortcut(x) if self.shortcut is not None else x))


class StandInResNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cfg["x_shape"][0], cfg["stem"], 3, padding=1,
                                            bias=False), nn.BatchNorm2d(cfg["stem"]), nn.ReLU())
        self.blocks = nn.ModuleList([BasicBlock(*b) for b in resnet_blocks(cfg)])
        self.fc = nn.Linear(cfg["stages"][-1][0], cfg["classes"])

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.fc(ops.mean(x, axis=(2, 3)))


def resnet_shapes():
    ex = _example("resnet_digits")
    cfg = dict(RESNET_PLACEHOLDER)
    if ex is not None:
        cfg.update(x_shape=list(ex.X_SHAPE), batch=ex.BATCH, source="examples/resnet_digits.py",
                   optimizer=_optimizer_of(ex, cfg["optimizer"]))
        got = sum(int(np.prod(p.shape)) for p in ex.make_model().parameters())
        if got != resnet_params(cfg):
            raise ValueError(f"examples/resnet_digits.py's make_model() has {got} parameters, "
                             f"bench/_workloads.py's RESNET_PLACEHOLDER {resnet_params(cfg)}: "
                             f"make the description match the example")
    cfg["params"] = resnet_params(cfg)
    return cfg


def resnet(cfg):
    ex = _example("resnet_digits")
    return ex.make_model() if ex is not None else StandInResNet(cfg)


def optimizer(cfg):
    """The example's make_optimizer() (groups included) where the section's shapes came from
    it, else tvf.optim's optimizer of cfg["optimizer"] ({"name", "lr", ...})."""
    source = cfg.get("source", "")
    if source.startswith("examples/"):
        ex = _example(os.path.splitext(os.path.basename(source))[0])
        if hasattr(ex, "make_optimizer"):
            return ex.make_optimizer()
    o = cfg["optimizer"]
    kw = {k: o[k] for k in ("betas", "eps", "weight_decay", "max_norm") if o.get(k) is not None}
    return getattr(tvf.optim, o["name"])(lr=o["lr"], **kw)
