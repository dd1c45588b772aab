"""Trainer over models of several inputs, losses with extras and sequence cross entropy:
fit slices every array with the same shuffle, evaluate's loss is the compiled loss's value,
checkpoints resume exactly, and a module taking any batch size trains on the partial batch
(that path on a fake module until symbolic batches land in compile_training)."""

import warnings

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops

nn = tvf.nn
B, T, V, D, C = 4, 3, 7, 5, 6  # batch, sequence, vocabulary, width, classes


class Tagger(nn.Module):
    """forward(tokens [B, T] int, mask [B, T, 1] float) -> logits [B, T, C]."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.head = nn.Linear(D, C)

    def forward(self, tokens, mask):
        h = self.embed(tokens) * mask                                  # [B, T, D]
        return ops.reshape(self.head(ops.reshape(h, shape=(B * T, D))), shape=(B, T, C))


def _module(seed=0, loss=None, extras=None, optimizer=None):
    tvf.manual_seed(seed)
    return tvf.compile_training(
        Tagger(), loss or nn.CrossEntropyLoss(ignore_index=-1),
        optimizer or tvf.optim.Adam(0.05), labels=tvf.TensorSpec((B, T), "int64"), extras=extras,
        inputs=(tvf.TensorSpec((B, T), "int64"), tvf.TensorSpec((B, T, 1), "float32")))


def _data(n=10, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (n, T))
    mask = (rng.random((n, T, 1)) > 0.2).astype("float32")
    labels = rng.integers(0, C, (n, T))
    labels[rng.random((n, T)) < 0.25] = -1  # ignored positions
    return tokens, mask, labels


def weighted_ce(logits, labels, weights):
    """Cross entropy of each position weighted by weights [B, T] (labels all valid):
    sum(w * nll) / sum(w), a loss with an extra input."""
    logp = ops.log_softmax(ops.reshape(logits, shape=(-1, C)), axis=-1)       # [B*T, C]
    picked = ops.sum(logp * ops.one_hot(ops.reshape(labels, shape=(-1,)), depth=C), axis=(1,))
    w = ops.reshape(weights, shape=(-1,))
    return -ops.sum(picked * w, axis=(0,)) / ops.sum(w, axis=(0,))


@pytest.fixture(scope="module")
def tagger():
    return _module()


@pytest.mark.slow
def test_fit_with_a_tuple_or_a_dict_is_the_hand_loop():
    tokens, mask, labels = _data(8)  # two whole batches
    seen = []

    def augment(xb, rng):
        seen.append(type(xb))
        return xb

    by_tuple = tvf.Trainer(_module(), seed=3, progress=False)
    by_tuple.fit((tokens, mask), labels, epochs=2, augment=augment)
    assert seen == [tuple] * 4  # augment gets the structure fit got
    by_dict = tvf.Trainer(_module(), seed=3, progress=False)
    by_dict.fit({"mask": mask, "tokens": tokens}, labels, epochs=2,
                augment=lambda xb, rng: seen.append(sorted(xb)) or xb)
    assert seen[4:] == [["mask", "tokens"]] * 4
    by_hand = _module()
    for e in range(2):
        for (tb, mb), yb in tvf.data.batches((tokens, mask), labels, B, True, seed=3 + e):
            by_hand.step((tb, mb), yb)
    assert by_tuple.module.step_count == by_dict.module.step_count == 4
    for n, v in by_hand.state_dict().items():
        np.testing.assert_array_equal(by_tuple.module.state_dict()[n], v, err_msg=n)
        np.testing.assert_array_equal(by_dict.module.state_dict()[n], v, err_msg=n)


def test_batches_slice_every_array_alike():
    x = np.arange(10)
    got = list(tvf.data.batches({"a": x, "b": -x}, x * 10, 3, True, seed=1, drop_last=False,
                                extras=(x + 100, x[:, None] * 2)))
    assert [len(yb) for _, yb, _ in got] == [3, 3, 3, 1]
    for xb, yb, (e1, e2) in got:
        np.testing.assert_array_equal(xb["b"], -xb["a"])
        np.testing.assert_array_equal(yb, xb["a"] * 10)
        np.testing.assert_array_equal(e1, xb["a"] + 100)
        np.testing.assert_array_equal(e2[:, 0], xb["a"] * 2)
    assert sorted(np.concatenate([yb for _, yb, _ in got]).tolist()) == list(range(0, 100, 10))


def test_arrays_of_different_sample_counts_are_named(tagger):
    tokens, mask, labels = _data(8)
    trainer = tvf.Trainer(tagger, progress=False)
    with pytest.raises(ValueError, match=r"x\[0\] holds 8 samples but x\[1\] holds 7"):
        trainer.fit((tokens, mask[:7]), labels)
    with pytest.raises(ValueError, match=r"x\['tokens'\] holds 8 samples but y holds 6"):
        trainer.fit({"tokens": tokens, "mask": mask}, labels[:6])
    with pytest.raises(ValueError, match=r"extras holds 5"):
        tvf.data.batches(tokens, labels, 4, False, 0, extras=labels[:5])
    with pytest.raises(ValueError, match=r"x\[1\] holds 7"):
        trainer.evaluate((tokens, mask[:7]), labels)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\) or ignore_index -1, got "
                                         r"values in \[-5, "):
        trainer.evaluate((tokens, mask), np.where(labels == -1, -5, labels))
    with pytest.raises(ValueError, match=r"integer labels of the logits' shape less the class "
                                         r"axis, \(8, 3\); got labels int64 \(8,\)"):
        trainer.evaluate((tokens, mask), labels[:, 0])
    assert tagger.step_count == 0


def test_evaluate_is_the_compiled_sequence_loss(tagger):
    """evaluate's loss on one batch is the compiled step's loss (lr 0); accuracy counts only
    the labels that are not ignore_index."""
    tokens, mask, labels = _data(B, seed=4)
    trainer = tvf.Trainer(tagger, progress=False)
    got = trainer.evaluate((tokens, mask), labels)
    assert got["loss"] == pytest.approx(tagger.loss((tokens, mask), labels), rel=1e-5)
    loss, _ = tagger.loss_and_grads((tokens, mask), labels)
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    logits, keep = tagger.predict((tokens, mask)), labels != -1
    assert got["accuracy"] == (logits.argmax(-1) == labels)[keep].mean()
    assert 0 < keep.sum() < labels.size  # some labels ignored: the test can tell
    # over several batches: the mean over every counted label, not the mean of batch means
    tokens, mask, labels = _data(3 * B, seed=5)
    labels[:B] = -1
    labels[:B, 0] = 1  # batch 1 counts 1 label, the others several
    sums = [tagger.loss((tokens[s:s + B], mask[s:s + B]), labels[s:s + B])
            * (labels[s:s + B] != -1).sum() for s in range(0, 3 * B, B)]
    assert trainer.evaluate((tokens, mask), labels)["loss"] == pytest.approx(
        sum(sums) / (labels != -1).sum(), rel=1e-5)


@pytest.mark.slow
def test_evaluate_with_label_smoothing():
    """Smoothing counts when the manifest records it or the Trainer holds the loss; a manifest
    without it gives the unsmoothed value, as evaluate's docstring says."""
    smoothed = nn.CrossEntropyLoss(ignore_index=-1, label_smoothing=0.2)
    module = _module(loss=smoothed)
    tokens, mask, labels = _data(B, seed=6)
    compiled = module.loss((tokens, mask), labels)
    plain = tvf.Trainer(module, progress=False).evaluate((tokens, mask), labels)["loss"]
    if "label_smoothing" in module.manifest:
        assert plain == pytest.approx(compiled, rel=1e-5)
    else:
        unsmoothed = nn.CrossEntropyLoss(ignore_index=-1)(module.predict((tokens, mask)),
                                                         labels)
        assert plain == pytest.approx(float(unsmoothed), rel=1e-5)
        assert abs(plain - compiled) > 1e-3
    given = tvf.Trainer(module, loss=smoothed, progress=False).evaluate((tokens, mask), labels)
    assert given["loss"] == pytest.approx(compiled, rel=1e-5)
    with pytest.raises(ValueError, match=r"loss 'mse' is not the loss this module was "
                                         r"compiled with \('cross_entropy'\)"):
        tvf.Trainer(module, loss=nn.MSELoss())


@pytest.mark.slow
def test_fit_and_evaluate_with_sample_weights():
    spec = tvf.TensorSpec((B, T), "float32")
    tokens, mask, _ = _data(8, seed=7)
    labels = np.random.default_rng(7).integers(0, C, (8, T))
    w = np.random.default_rng(8).random((8, T)).astype("float32")
    trainer = tvf.Trainer(_module(loss=weighted_ce, extras=spec), seed=2, loss=weighted_ce,
                          progress=False)
    history = trainer.fit((tokens, mask), labels, extras=w, epochs=2,
                          val=((tokens[:B], mask[:B]), labels[:B], w[:B]))
    by_hand = _module(loss=weighted_ce, extras=spec)
    for e in range(2):
        for xb, yb, wb in tvf.data.batches((tokens, mask), labels, B, True, 2 + e, extras=w):
            by_hand.step(xb, yb, extras=wb)
    for n, v in by_hand.state_dict().items():
        np.testing.assert_array_equal(trainer.module.state_dict()[n], v, err_msg=n)
    compiled = trainer.module.loss((tokens[:B], mask[:B]), labels[:B], extras=w[:B])
    assert history[-1]["val_loss"] == pytest.approx(compiled, rel=1e-5)
    # the weights matter: other weights, another value
    other = trainer.evaluate((tokens[:B], mask[:B]), labels[:B], extras={"weights": w[:B] ** 4})
    assert abs(other["loss"] - compiled) > 1e-4
    # without the loss, evaluate cannot know what the extras mean: an error before training
    bare = tvf.Trainer(_module(loss=weighted_ce, extras=spec), progress=False)
    with pytest.raises(ValueError, match=r"a loss with extra inputs \['weights'\], which "
                                         r"evaluate cannot rebuild .*tvf.Trainer\(module, loss="):
        bare.fit((tokens, mask), labels, extras=w, val=((tokens, mask), labels, w))
    assert bare.module.step_count == 0
    with pytest.raises(ValueError, match=r"takes extra inputs \['weights'\]: pass extras="):
        trainer.evaluate((tokens, mask), labels)


def test_resume_a_model_of_several_inputs(tmp_path):
    """3 epochs straight == 1 epoch, checkpoint, a fresh trainer resuming for 2: same history
    and parameters, bit for bit (tuple inputs, augmentation of the mask)."""
    tokens, mask, labels = _data(12, seed=9)

    def augment(xb, rng):
        t, m = xb
        return t, m * rng.uniform(0.5, 1.5, m.shape).astype(m.dtype)

    def run(epochs, trainer):
        return trainer.fit((tokens, mask), labels, epochs=epochs, augment=augment)

    straight = tvf.Trainer(_module(0), seed=4, progress=False)
    run(3, straight)
    first = tvf.Trainer(_module(0), seed=4, progress=False)
    run(1, first)
    path = first.save_checkpoint(str(tmp_path / "run.safetensors"))
    resumed = tvf.Trainer(_module(1), seed=0, progress=False).load_checkpoint(path)
    run(2, resumed)
    strip = [{k: v for k, v in h.items() if k != "samples_per_s"} for h in straight.history]
    assert [{k: v for k, v in h.items() if k != "samples_per_s"}
            for h in resumed.history] == strip
    for n, v in straight.module.state_dict().items():
        np.testing.assert_array_equal(resumed.module.state_dict()[n], v, err_msg=n)


def test_fixed_batch_warns_once_about_skipped_samples():
    tokens, mask, labels = _data(10)
    trainer = tvf.Trainer(_module(), progress=False)
    with pytest.warns(UserWarning, match=r"10 samples make 2 batches of 4; the last 2 samples "
                                         r"of each \(shuffled\) epoch are skipped") as caught:
        trainer.fit((tokens, mask), labels, epochs=3)
    assert len([w for w in caught if "skipped" in str(w.message)]) == 1
    assert trainer.module.step_count == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.fit((tokens[:8], mask[:8]), labels[:8])  # whole batches: no warning
    with pytest.raises(ValueError, match=r"batch_size=2, but this module's step is compiled "
                                         r"for batches of 4 only"):
        trainer.fit((tokens, mask), labels, batch_size=2)


class AnyBatch:
    """What fit and checkpoints use of a TrainingModule compiled for any batch size
    (batch_size None): step records its batches; the loss is the batch's mean of x."""

    batch_size = None

    def __init__(self):
        self.manifest = {"loss": "mse", "inputs": [{"name": "x", "shape": ["batch", 2],
                                                    "dtype": "float32"}],
                         "parameters": [{"name": "w", "shape": [1], "dtype": "float32"}],
                         "optimizer": {"name": "sgd", "state": []}}
        self.step_count, self.lr, self.w, self.seen = 0, 0.1, np.zeros(1, "float32"), []

    def step(self, x, y, lr=None, extras=None):
        self.seen.append((x.copy(), y.copy(), extras))
        self.step_count += 1
        self.w = self.w + 1
        return float(x.mean())

    def predict(self, x):
        return x

    def state_dict(self):
        return {"w": self.w.copy()}

    def load_state_dict(self, state):
        self.w = np.array(state["w"])

    def optimizer_state(self):
        return {}

    def load_optimizer_state(self, state):
        assert state == {}


def test_any_batch_size_trains_on_the_partial_batch(tmp_path):
    x = np.arange(20, dtype="float32").reshape(10, 2)
    module = AnyBatch()
    trainer = tvf.Trainer(module, seed=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped, nothing to warn about
        history = trainer.fit(x, x, epochs=2, batch_size=4)
    assert [len(xb) for xb, _, _ in module.seen] == [4, 4, 2] * 2
    for epoch in (module.seen[:3], module.seen[3:]):
        rows = np.concatenate([xb for xb, _, _ in epoch])
        assert sorted(rows[:, 0].tolist()) == list(range(0, 20, 2))  # every sample, once
    # the epoch's loss is the mean over samples: the partial batch weighs 2, not 4
    assert history[0]["loss"] == pytest.approx(x.mean())
    assert history[0]["samples_per_s"] > 0
    # the batch size is kept for the next fit and travels with a checkpoint
    path = trainer.save_checkpoint(str(tmp_path / "any.safetensors"))
    resumed = tvf.Trainer(AnyBatch(), progress=False).load_checkpoint(path)
    assert resumed.batch_size == 4 and resumed.module.step_count == 6
    resumed.fit(x, x)
    assert [len(xb) for xb, _, _ in resumed.module.seen] == [4, 4, 2]
    default = AnyBatch()
    tvf.Trainer(default, progress=False).fit(np.zeros((70, 2), "float32"),
                                             np.zeros((70, 2), "float32"))
    assert [len(xb) for xb, _, _ in default.seen] == [32, 32, 6]
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        tvf.Trainer(AnyBatch(), progress=False).fit(x, x, batch_size=0)
    assert tvf.Trainer(module, progress=False).evaluate(x, x + 1) == {"loss": 1.0}
    with pytest.raises(ValueError, match=r"targets of the outputs' shape \(10, 2\), got \(10,\)"):
        tvf.Trainer(module, progress=False).evaluate(x, x[:, 0])
