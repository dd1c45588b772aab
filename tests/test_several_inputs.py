"""Several model inputs, integer inputs, losses with extra tensors, and CrossEntropyLoss over
[B, T, V] with ignore_index and label_smoothing (checked against numpy here, against PyTorch
in test_torch_batchnorm_ce.py)."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops
from tvmfront._tvm import te

nn = tvf.nn


@tvf.op
def gather_rows(table, ids):
    """table[ids[b, t], :] -> [B, T, D]"""
    return te.compute((*ids.shape, table.shape[1]), lambda b, t, d: table[ids[b, t], d],
                      name="gather_rows")


@gather_rows.grad
def _(dy, table, ids):
    bt = [te.reduce_axis((0, ids.shape[0]), "b"), te.reduce_axis((0, ids.shape[1]), "t")]
    zero = tvf.tirx.const(0, dy.dtype)
    return [te.compute(table.shape, lambda v, d: te.sum(te.if_then_else(
        ids[bt[0], bt[1]].astype("int32") == v, dy[bt[0], bt[1], d], zero), axis=bt)), None]


class Tagger(nn.Module):
    """forward(tokens, mask): token ids [B, T] (int) and a float mask [B, T, 1]."""

    def __init__(self, vocab=7, dim=4, classes=5):
        super().__init__()
        self.table = nn.Parameter(np.random.default_rng(0).normal(size=(vocab, dim))
                                  .astype("float32"))
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens, mask):
        h = gather_rows(self.table, tokens) * mask                     # [B, T, D]
        b, t, d = h.shape
        return ops.reshape(self.head(ops.reshape(h, shape=(b * t, d))), shape=(b, t, -1))


def _tokens(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 7, (3, 4)).astype(dtype),
            (rng.random((3, 4, 1)) > 0.2).astype("float32"), rng.integers(0, 5, (3, 4)))


def _ce_ref(logits, labels, ignore, s):
    z = logits.reshape(-1, logits.shape[-1]).astype("float64")
    y = labels.reshape(-1)
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    keep = y != ignore
    nll = -logp[np.arange(len(y)), np.where(keep, y, 0)]
    smooth = -logp.mean(1)
    return (((1 - s) * nll + s * smooth) * keep).sum() / keep.sum()


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_token_ids_and_mask_sequence_cross_entropy(dtype):
    tvf.manual_seed(0)
    model = Tagger()
    tokens, mask, labels = _tokens(dtype)
    labels[0, :2] = -1
    loss = nn.CrossEntropyLoss(ignore_index=-1, label_smoothing=0.1)
    m = tvf.compile_training(model, loss, tvf.optim.SGD(lr=0.1), labels=labels,
                             inputs={"mask": mask, "tokens": tokens})  # dict: by argument name
    assert [i["name"] for i in m.manifest["inputs"]] == ["tokens", "mask"]
    assert m.manifest["ignore_index"] == -1
    logits = m.predict((tokens, mask))
    assert logits.shape == (3, 4, 5)
    got = m.step((tokens, mask), labels, lr=0.0)
    np.testing.assert_allclose(got, _ce_ref(logits, labels, -1, 0.1), rtol=1e-5)
    # other integer dtypes are cast when the values fit; the dict form works too
    other = tokens.astype("int64" if dtype == "int32" else "int32")
    assert m.loss({"tokens": other, "mask": mask}, labels) == pytest.approx(got, rel=1e-6)
    np.testing.assert_allclose(m.predict((tokens[:1], mask[:1])), logits[:1], rtol=1e-6)
    with pytest.raises(tvf.ShapeError, match=r"input 'tokens': expected integers"):
        m.step((tokens.astype("float32"), mask), labels)
    with pytest.raises(tvf.ShapeError, match=r"input 'mask': expected shape \(3, 4, 1\)"):
        m.step((tokens, mask[..., 0]), labels)
    with pytest.raises(tvf.ShapeError, match=r"takes 2 inputs \['tokens', 'mask'\], got 1"):
        m.step((tokens,), labels)
    with pytest.raises(tvf.ShapeError, match=r"labels must lie in \[0, 5\) or ignore_index -1"):
        m.step((tokens, mask), np.full((3, 4), 5))


def test_ce_gradient_matches_numpy_and_all_ignored_is_nan():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 4)).astype("float64")
    labels = np.array([0, 3, -100, 1, -100, 2])
    f = lambda z: ops.cross_entropy(z, labels, label_smoothing=0.2)  # noqa: E731
    np.testing.assert_allclose(f(logits), _ce_ref(logits, labels, -100, 0.2), rtol=1e-10)
    for derived in (False, True):
        assert tvf.gradcheck(ops.cross_entropy, [logits, labels], label_smoothing=0.2,
                             derived=derived)
    with np.errstate(invalid="ignore"):
        assert np.isnan(ops.cross_entropy(logits, np.full(6, -100)))


def weighted_mse(pred, target, weights):
    """mean(weights * (pred - target)^2): a loss with an extra input."""
    d = pred - target
    return ops.mse_loss(d * ops.sqrt(weights), d * 0.0)


def test_loss_with_extra_weights():
    tvf.manual_seed(0)
    model = nn.Linear(3, 2)
    rng = np.random.default_rng(3)
    x, t = rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=(4, 2)).astype("float32")
    w = rng.random((4, 2)).astype("float32")
    m = tvf.compile_training(model, weighted_mse, tvf.optim.SGD(lr=0.1), inputs=x, labels=t,
                             extras=w)
    assert m.manifest["extras"] == [{"name": "weights", "shape": [4, 2], "dtype": "float32"}]
    pred = m.predict(x)
    want = float((w * (pred - t) ** 2).mean())
    assert m.step(x, t, lr=0.0, extras=w) == pytest.approx(want, rel=1e-5)
    assert m.loss(x, t, extras={"weights": w}) == pytest.approx(m.step(x, t, lr=0.0, extras=(w,)))
    with pytest.raises(tvf.ShapeError, match="takes extra inputs"):
        m.step(x, t)
    with pytest.raises(tvf.ShapeError, match=r"extra 'weights': expected shape \(4, 2\)"):
        m.step(x, t, extras=w[:2])


def test_one_input_errors_name_the_tensor():
    tvf.manual_seed(0)
    m = tvf.compile_training(nn.Linear(3, 2), nn.MSELoss(), tvf.optim.SGD(lr=0.1),
                             inputs=(4, 3), labels=(4, 2))
    t = np.zeros((4, 2), "float32")
    with pytest.raises(tvf.ShapeError, match=r"x: expected shape \(4, 3\) dtype float32, got "
                                             r"shape \(4, 3, 1\)"):
        m.step(np.zeros((4, 3, 1), "float32"), t)
    with pytest.raises(tvf.ShapeError, match=r"x: expected shape .* got shape \(4, 3\) dtype "
                                             r"float64"):
        m.step(np.zeros((4, 3)), t)
    with pytest.raises(tvf.ShapeError, match=r"inputs: got a list holding specs; the compiled "
                                             r"step takes one array here"):
        tvf.compile_inference(nn.Linear(3, 2), inputs=[(1, 3), (1, 3)])
    with pytest.raises(TypeError, match=r"3 specs for 2 arguments \['tokens', 'mask'\]"):
        tvf.compile_inference(Tagger(), inputs=[(1, 3), (1, 3), (1, 3)])
    with pytest.raises(TypeError, match=r"unknown names \['tokenz'\]"):
        tvf.compile_inference(Tagger(), inputs={"tokenz": (1, 3), "mask": (1, 3, 1)})
    with pytest.raises(TypeError, match=r"inputs: an empty dict; give a spec for each of the "
                                        r"arguments \['tokens', 'mask'\]"):
        tvf.compile_inference(Tagger(), inputs={})  # had said "missing []"


class SharedMatrix(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x, m):  # x [B, 4], m [4, 4]: one matrix for every sample
        return self.lin(ops.dense(x, m))


@pytest.mark.parametrize("n", [1, 3, 4, 7])
def test_predict_passes_an_unbatched_input_whole_at_a_fixed_batch(n):
    """At a fixed batch every input was split as samples: m [4, 4] beside x [3, 4] made predict
    refuse 3 and 7 samples ('different numbers of samples') and crash in TVM's match_cast at
    4. It goes whole to every batch, as at any batch size."""
    tvf.manual_seed(0)
    model = SharedMatrix()
    rng = np.random.default_rng(0)
    m = rng.standard_normal((4, 4)).astype("float32")
    x = rng.standard_normal((n, 4)).astype("float32")
    module = tvf.compile_inference(model, inputs=(tvf.Spec((3, 4), "float32"),
                                                  tvf.Spec((4, 4), "float32")))
    want = (x @ m.T) @ np.asarray(model.lin.weight.data).T + np.asarray(model.lin.bias.data)
    np.testing.assert_allclose(module.predict((x, m)), want, rtol=1e-5, atol=1e-6)
