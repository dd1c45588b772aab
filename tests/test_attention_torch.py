"""PyTorch parity of nn.TransformerEncoderLayer and nn.MultiheadAttention: torch builds each
layer, its state_dict loads into ours strictly (same names, shapes, dtypes), and the forward
output, the MSE loss and every parameter's gradient through a compiled train step agree
within 1e-4 relative in float32 (1e-10 in float64). Torch runs once, in its own process
(tests/_torch.py)."""

import json

import numpy as np
import pytest

import tvmfront as tvf
from _torch import run_torch

nn = tvf.nn
B, T, E, H, FF = 2, 5, 8, 2, 16

LAYER = dict(kind="layer", d_model=E, nhead=H, dim_feedforward=FF, batch_first=True,
             causal=True)
CASES = {
    "post-norm-relu": dict(LAYER, norm_first=False, activation="relu"),
    "post-norm-gelu": dict(LAYER, norm_first=False, activation="gelu"),
    "pre-norm-relu": dict(LAYER, norm_first=True, activation="relu"),
    "pre-norm-gelu": dict(LAYER, norm_first=True, activation="gelu"),
    # seq-first layout, a key padding mask instead of causality
    "seq-first-padding": dict(LAYER, norm_first=True, activation="gelu", batch_first=False,
                              causal=False, pad=True),
    # float64: PyTorch's and our arithmetic agree to rounding
    "pre-norm-gelu-float64": dict(LAYER, norm_first=True, activation="gelu", dtype="float64"),
    # MultiheadAttention alone
    "mha-seq-first-bool-mask": dict(kind="mha", d_model=E, nhead=H, batch_first=False,
                                    mask="bool", need_weights=True),
    "mha-cross-float-mask-padding": dict(kind="mha", d_model=E, nhead=H, batch_first=True,
                                         split=3, mask="float3d", pad=True, need_weights=True,
                                         average_attn_weights=False),
}
NAMES = list(CASES)


def _inputs(i, case):
    rng = np.random.default_rng(i)
    dtype = case.get("dtype", "float32")
    shape = (B, T, E) if case["batch_first"] else (T, B, E)
    arrays = {"x": rng.standard_normal(shape).astype(dtype),
              "target": rng.standard_normal(shape).astype(dtype)}
    s = case.get("split") or T
    t = T - case["split"] if case.get("split") else T
    if case.get("mask") == "bool":  # True = masked out; the diagonal stays open
        arrays["mask"] = (rng.random((t, s)) < 0.4) & ~np.eye(t, s, dtype=bool)
    elif case.get("mask") == "float3d":
        arrays["mask"] = rng.standard_normal((B * H, t, s)).astype("float32")
    if case.get("pad"):  # the last two keys of sample 1 are padding
        pad = np.zeros((B, s), dtype=bool)
        pad[1, -2:] = True
        arrays["pad"] = pad
    if case["kind"] == "mha":  # output [B, T', E] (or [T', B, E]) of the query's length
        shape = (B, t, E) if case["batch_first"] else (t, B, E)
        arrays["target"] = rng.standard_normal(shape).astype("float32")
    return arrays


@pytest.fixture(scope="module")
def torch_results(request, tmp_path_factory):
    arrays = {}
    for i, name in enumerate(NAMES):
        arrays.update({f"{k}{i}": v for k, v in _inputs(i, CASES[name]).items()})
    return run_torch(request, "PyTorch parity of attention and Transformer layers",
                     "_torch_attention.py", tmp_path_factory.mktemp("attention_torch"),
                     cases=np.array(json.dumps([CASES[n] for n in NAMES])), **arrays)


class _Layer(nn.Module):
    """One input, masks as constants: the traced model of a case."""

    def __init__(self, case, arrays, weights=False):
        super().__init__()
        self.case, self.mask, self.pad, self.weights = case, arrays.get("mask"), \
            arrays.get("pad"), weights
        if case["kind"] == "layer":
            self.layer = nn.TransformerEncoderLayer(
                E, H, dim_feedforward=FF, dropout=0.0, activation=case["activation"],
                batch_first=case["batch_first"], norm_first=case["norm_first"],
                dtype=case.get("dtype", "float32"))
        else:
            self.layer = nn.MultiheadAttention(E, H, batch_first=case["batch_first"])

    def forward(self, x):
        case = self.case
        if case["kind"] == "layer":
            return self.layer(x, src_key_padding_mask=self.pad, is_causal=case["causal"])
        q = kv = x
        if case.get("split"):
            s = case["split"]
            q, kv = (x[:, :-s], x[:, -s:]) if case["batch_first"] else (x[:-s], x[-s:])
        out, w = self.layer(q, kv, kv, key_padding_mask=self.pad, attn_mask=self.mask,
                            need_weights=self.weights,
                            average_attn_weights=case.get("average_attn_weights", True))
        return w if self.weights else out


def _close(ours, ref, what, dtype="float32"):
    # 1e-4 relative (1e-10 in float64), elementwise; entries far below the tensor's scale are
    # held to that fraction of it
    rtol = 1e-10 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * float(np.abs(ref).max()),
                               err_msg=what)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_matches_pytorch(torch_results, name):
    i, case = NAMES.index(name), CASES[name]
    dtype = case.get("dtype", "float32")
    arrays = _inputs(i, case)
    state = {k[len(f"{i}.p."):]: v for k, v in torch_results.items() if k.startswith(f"{i}.p.")}
    model = _Layer(case, arrays)
    model.layer.load_state_dict(state)  # strict: PyTorch's names, shapes and dtypes
    x, target = arrays["x"], arrays["target"]
    module = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(0.1), inputs=x,
                                  labels=target)
    _close(module.predict(x), torch_results[f"{i}.out"], f"{name}: forward", dtype)
    loss, grads = module.loss_and_grads(x, target)
    _close(np.float64(loss), torch_results[f"{i}.loss"], f"{name}: loss", dtype)
    assert sorted(grads) == sorted("layer." + n for n in state)
    for n in state:
        _close(grads["layer." + n], torch_results[f"{i}.g.{n}"], f"{name}: gradient of {n}",
               dtype)
    if case.get("need_weights"):
        weights_model = _Layer(case, arrays, weights=True)
        weights_model.layer.load_state_dict(state)
        weights = tvf.compile_inference(weights_model, inputs=x)(x)
        _close(weights, torch_results[f"{i}.weights"], f"{name}: attention weights")
