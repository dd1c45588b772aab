"""PyTorch parity as the acceptance test of issue 10: the same weights in tvmfront and PyTorch
(tvmfront's state_dict, PyTorch's names, loaded strictly into torch), trained a few AdamW steps
(decoupled weight decay) with cross entropy, give the same train-mode forward output, losses,
first-step gradients, updated parameters and buffers (BatchNorm running statistics and
num_batches_tracked), and eval-mode outputs, within 1e-4 relative in float32 and 1e-10 in
float64. Models: a residual block with BatchNorm2d; a causal TransformerEncoderLayer (dropout 0,
post- and pre-norm) with a linear head over [B, T, V]; Embedding with padding_idx and a head,
cross entropy over [B, T, V] with ignore_index and label_smoothing. PyTorch runs once, in its
own process (tests/_torch_parity.py)."""

import copy
import json

import numpy as np
import pytest

import tvmfront as tvf
from _torch import run_torch
from test_torch_batchnorm_ce import Block

nn = tvf.nn
STEPS = 3
ADAMW = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.5)
B, T, E, H, FF, V = 3, 5, 8, 2, 16, 7
PAD, IGNORE = 1, 0  # Embedding's padding_idx; the ignored label

_ENCODER = dict(kind="encoder", d_model=E, nhead=H, dim_feedforward=FF, vocab=V,
                ignore_index=-100, label_smoothing=0.0)
_EMBED = dict(kind="embed", vocab=V, dim=4, padding_idx=PAD, ignore_index=IGNORE,
              label_smoothing=0.1)
_RESBLOCK = dict(kind="resblock", c=2, ignore_index=-100, label_smoothing=0.0)
CASES = {
    "resblock-float32": dict(_RESBLOCK, dtype="float32"),
    "resblock-float64": dict(_RESBLOCK, dtype="float64"),
    "encoder-post-norm-relu-float32": dict(_ENCODER, norm_first=False, activation="relu",
                                           dtype="float32"),
    "encoder-pre-norm-gelu-float32": dict(_ENCODER, norm_first=True, activation="gelu",
                                          dtype="float32"),
    "encoder-pre-norm-gelu-float64": dict(_ENCODER, norm_first=True, activation="gelu",
                                          dtype="float64"),
    "embed-float32": dict(_EMBED, dtype="float32"),
    "embed-float64": dict(_EMBED, dtype="float64"),
}
NAMES = list(CASES)


class Encoder(nn.Module):
    def __init__(self, case):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            E, H, dim_feedforward=FF, dropout=0.0, activation=case["activation"],
            batch_first=True, norm_first=case["norm_first"], dtype=case["dtype"])
        self.head = nn.Linear(E, V, dtype=case["dtype"])

    def forward(self, x):
        return self.head(self.layer(x, is_causal=True))


class Embed(nn.Module):
    def __init__(self, case):
        super().__init__()
        self.emb = nn.Embedding(V, case["dim"], padding_idx=PAD, dtype=case["dtype"])
        self.head = nn.Linear(case["dim"], V, dtype=case["dtype"])

    def forward(self, ids):
        return self.head(self.emb(ids))


def _model(name):
    """The case's tvmfront model, seeded, with BatchNorm's affine parameters and running
    statistics moved off their defaults (so a mixed-up scale, shift or momentum shows)."""
    case = CASES[name]
    tvf.manual_seed(NAMES.index(name))
    if case["kind"] == "resblock":
        model = Block(case["c"], dtype=case["dtype"])
        return perturb_batchnorms(model, ("bn1", "bn2"), np.random.default_rng(5))
    return {"encoder": Encoder, "embed": Embed}[case["kind"]](case)


def perturb_batchnorms(model, names, rng):
    """`model` with the BatchNorms `names` moved off their default affine parameters and
    running statistics (so a mixed-up scale, shift or momentum shows); returns it."""
    state = model.state_dict()
    for name in names:
        c = state[f"{name}.weight"].shape[0]
        state[f"{name}.weight"][:] = rng.uniform(0.5, 1.5, c)
        state[f"{name}.bias"][:] = rng.normal(0, 0.3, c)
        state[f"{name}.running_mean"][:] = rng.normal(0, 0.5, c)
        state[f"{name}.running_var"][:] = rng.uniform(0.5, 2.0, c)
        state[f"{name}.num_batches_tracked"][...] = 4
    model.load_state_dict(state)
    return model


def _batches(name):
    """[(x, y)] * STEPS and the eval batch xe."""
    case, rng = CASES[name], np.random.default_rng(100 + NAMES.index(name))
    if case["kind"] == "resblock":
        c = case["c"]
        xs = [rng.normal(0.5, 2.0, (6, c, 4, 4)) for _ in range(STEPS + 1)]
        ys = [rng.integers(0, 3, 6) for _ in range(STEPS)]
    elif case["kind"] == "encoder":
        xs = [rng.standard_normal((B, T, E)) for _ in range(STEPS + 1)]
        ys = [rng.integers(0, V, (B, T)) for _ in range(STEPS)]
    else:  # token ids with padding; a quarter of the labels (and some fixed ones) ignored
        xs = [rng.integers(0, V - 1, (B, T)) for _ in range(STEPS + 1)]
        for x in xs:
            x[:, -1] = PAD
            x[0, -2] = PAD
        ys = [np.where(rng.random((B, T)) < 0.25, IGNORE, rng.integers(0, V, (B, T)))
              for _ in range(STEPS)]
        for y in ys:
            y[0, 0] = IGNORE
    if case["kind"] != "embed":
        xs = [x.astype(case["dtype"]) for x in xs]
    return list(zip(xs[:STEPS], ys)), xs[STEPS]


def _zero_gradient(name):
    """{parameter: index} of the entries whose true gradient is exactly zero, by the maths: the
    key bias of attention (softmax is invariant to adding q . b_k to every score of a query).
    Their computed gradients are rounding noise, which AdamW's g / (sqrt(v) + eps) scales up to
    steps of up to lr (eps is 1e-8): no two implementations agree there after a step, so those
    entries are checked to be noise, not compared after the updates."""
    if CASES[name]["kind"] != "encoder":
        return {}
    return {"layer.self_attn.in_proj_bias": slice(E, 2 * E)}


@pytest.fixture(scope="module")
def torch_results(request, tmp_path_factory):
    arrays, cases = {}, []
    for i, name in enumerate(NAMES):
        cases.append(dict(CASES[name], steps=STEPS, adamw=ADAMW))
        arrays.update({f"{i}.s.{k}": v for k, v in _model(name).state_dict().items()})
        batches, xe = _batches(name)
        for t, (x, y) in enumerate(batches):
            arrays[f"{i}.x{t}"], arrays[f"{i}.y{t}"] = x, y
        arrays[f"{i}.xe"] = xe
    return run_torch(request, "PyTorch parity with AdamW (residual BatchNorm block, causal "
                     "Transformer encoder layer, Embedding + cross entropy)", "_torch_parity.py",
                     tmp_path_factory.mktemp("parity_adamw"),
                     cases=np.array(json.dumps(cases)), **arrays)


def _close(ours, ref, what, dtype):
    # 1e-4 relative (1e-10 in float64), elementwise; entries far below the tensor's scale are
    # held to that fraction of it
    rtol = 1e-10 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * max(float(np.abs(ref).max()),
                                                                     1e-3), err_msg=what)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_adamw_training_matches_pytorch(torch_results, name):
    i, case = NAMES.index(name), CASES[name]
    dtype = case["dtype"]
    want = {k[len(f"{i}."):]: v for k, v in torch_results.items() if k.startswith(f"{i}.")}
    model = _model(name)
    batches, xe = _batches(name)
    x0 = batches[0][0]
    if case["kind"] == "resblock":  # train-mode forward (batch statistics), eagerly on a copy
        eager = copy.deepcopy(model)
        eager.train()
        _close(eager(x0), want["out"], f"{name}: train-mode forward", dtype)
    loss = nn.CrossEntropyLoss(ignore_index=case["ignore_index"],
                               label_smoothing=case["label_smoothing"])
    m = tvf.compile_training(model, loss, tvf.optim.AdamW(**ADAMW), inputs=x0,
                             labels=batches[0][1])
    if case["kind"] != "resblock":  # eval = train mode here (no BatchNorm, dropout 0)
        _close(m.predict(x0), want["out"], f"{name}: forward", dtype)
    loss0, grads = m.loss_and_grads(*batches[0])
    assert sorted(grads) == sorted(k[2:] for k in want if k.startswith("g."))
    for n, g in grads.items():
        assert g.dtype == dtype, n
        _close(g, want["g." + n], f"{name}: gradient of {n}", dtype)
    noise = 1e-12 if dtype == "float64" else 1e-5
    for n, index in _zero_gradient(name).items():  # noise in both, far below the rest
        scale = float(np.abs(want["g." + n]).max())
        assert np.abs(grads[n][index]).max() < noise * scale, n
        assert np.abs(want["g." + n][index]).max() < noise * scale, n
    if case["kind"] == "embed":  # the padding row gets no gradient, in both
        assert not want["g.emb.weight"][PAD].any()
        assert not grads["emb.weight"][PAD].any()
    losses = [m.step(x, y) for x, y in batches]
    assert losses[0] == loss0
    _close(np.array(losses), want["losses"], f"{name}: losses", dtype)
    state = m.state_dict()
    assert sorted(state) == sorted(k[2:] for k in want if k.startswith("s."))
    for n, value in state.items():
        assert value.dtype == want["s." + n].dtype, n
        ref, value = want["s." + n].copy(), value.copy()
        if n in _zero_gradient(name):
            ref[_zero_gradient(name)[n]] = value[_zero_gradient(name)[n]] = 0
        _close(value, ref, f"{name}: {n} after {STEPS} AdamW steps", dtype)
    if case["kind"] == "resblock":
        assert int(state["bn1.num_batches_tracked"]) == 4 + STEPS
    if case["kind"] == "embed":  # the padding row stays zero (decay of zero, no gradient)
        assert not state["emb.weight"][PAD].any()
    _close(m.predict(xe), want["eval"], f"{name}: eval-mode forward", dtype)
