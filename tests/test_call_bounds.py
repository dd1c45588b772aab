"""What calls of a compiled function must satisfy, recorded when it is traced and checked
before each call (tvmfront/runtime/bounds.py), in a reloaded bundle too:

- an int index on a symbolic axis (x[:, -2] over a sequence of any length) needs that many
  positions: fewer is a ShapeError naming the dimension. Before, the kernel read outside the
  input buffer (predict returned numbers from the memory before it, step trained on them);
- positions 0..T-1 index a table of `context` rows (CausalLM's positional embedding): a
  longer symbolic T is a ShapeError, a longer constant T a compile-time error. Before, the
  positions past the table read its last row;
- token ids (a data input read by an embedding) and decode's runtime position must lie in
  their table: a ValueError naming the input, the value and where it is. Before, the kernel
  clamped them (id V read row V - 1; pos -1 gave NaN logits).

Manifest keys min_sizes, max_sizes, id_ranges: per function at the top level (predict's from
the eval-mode forward, step's from the training forward and the loss), per method inside
methods."""

import json
import os

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import nn, ops

SPEC = tvf.Spec(("batch", "seq", 4), "float32")
TOO_SHORT = "dimension 'seq' is 1 in x, but {} needs at least 2 position\\(s\\) along it"


class SecondToLast(nn.Module):
    """A Linear of the second-to-last position: needs seq >= 2."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x[:, -2])


def _numpy_forward(module, x):
    state = module.state_dict()
    return x[:, -2] @ state["fc.weight"].T + state["fc.bias"]


def _x(seq, batch=2):
    return np.random.default_rng(seq).standard_normal((batch, seq, 4)).astype("float32")


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    tvf.manual_seed(0)
    infer = tvf.compile_inference(SecondToLast(), SPEC)
    train = tvf.compile_training(SecondToLast(), nn.MSELoss(), tvf.optim.SGD(0.1), inputs=SPEC,
                                 labels=tvf.Spec(("batch", 3), "float32"))
    root = tmp_path_factory.mktemp("bounds")
    return infer, train, infer.export(str(root / "infer")), train.export(str(root / "train"))


def test_the_manifest_records_what_each_function_needs(modules):
    infer, train, _, _ = modules
    assert infer.manifest["min_sizes"] == {"predict": {"seq": 2}}
    assert train.manifest["min_sizes"] == {"predict": {"seq": 2}, "step": {"seq": 2}}
    plain = tvf.compile_inference(nn.Linear(4, 3), tvf.Spec(("batch", 4), "float32"))
    assert "min_sizes" not in plain.manifest


def test_predict_on_too_few_positions_is_refused_on_every_path(modules):
    infer, train, infer_path, train_path = modules
    loaded = tvf.load(infer_path)
    short = _x(1)
    for m in (infer, train, loaded):
        for call in (m.predict,  # one compiled batch: the fast path
                     lambda x: m.predict([x]),  # the general path
                     lambda x: m.predict(np.concatenate([x] * 3), batch_size=4)):  # chunked
            for _ in range(2):  # the fast path keeps tensors per shape: refused again
                with pytest.raises(tvf.ShapeError, match=TOO_SHORT.format("predict")):
                    call(short)
    with pytest.raises(tvf.ShapeError, match=TOO_SHORT.format("predict")):
        infer(short)  # InferenceModule.__call__


def test_step_and_loss_on_too_few_positions_are_refused_and_change_nothing(modules):
    _, train, _, train_path = modules
    for m in (train, tvf.load(train_path)):
        before, steps = m.state_dict(), m.step_count
        y = np.zeros((2, 3), "float32")
        for call in (lambda x: m.step(x, y),  # the fast path
                     lambda x: m.step([x], y),  # the general path
                     lambda x: m.loss(x, y),
                     lambda x: m.loss_and_grads(x, y)):
            for _ in range(2):
                with pytest.raises(tvf.ShapeError, match=TOO_SHORT.format("step")):
                    call(_x(1))
        assert m.step_count == steps
        for name, value in m.state_dict().items():
            np.testing.assert_array_equal(value, before[name])


def test_enough_positions_give_the_numpy_values(modules):
    infer, train, infer_path, _ = modules
    for seq in (2, 5):
        x = _x(seq)
        for m in (infer, tvf.load(infer_path)):
            np.testing.assert_allclose(m.predict(x), _numpy_forward(m, x), rtol=1e-5, atol=1e-6)
    x, y = _x(3), np.ones((2, 3), "float32")
    want = np.mean((_numpy_forward(train, x) - y) ** 2)
    np.testing.assert_allclose(train.step(x, y, lr=0.0), want, rtol=1e-5)


class LastPositionLoss(nn.Module):
    """An MSE of the output's last position: only the loss indexes the sequence."""

    def forward(self, out, y):
        d = out[:, -1] - y
        return ops.mean(d * d)


def test_an_index_in_the_loss_binds_the_step_only():
    tvf.manual_seed(0)
    model = nn.Linear(4, 3)
    train = tvf.compile_training(model, LastPositionLoss(), tvf.optim.SGD(0.1), inputs=SPEC,
                                 labels=tvf.Spec(("batch", 3), "float32"))
    assert train.manifest["min_sizes"] == {"step": {"seq": 1, "batch": 1}}  # batch: the mean
    empty = np.zeros((2, 0, 4), "float32")
    assert train.predict(empty).shape == (2, 0, 3)  # predict indexes nothing: allowed
    x, y = _x(3), np.ones((2, 3), "float32")
    state = train.state_dict()
    out = x[:, -1] @ state["weight"].T + state["bias"]
    np.testing.assert_allclose(train.step(x, y, lr=0.0), np.mean((out - y) ** 2), rtol=1e-5)


@pytest.mark.parametrize("kind", ["min_sizes", "max_sizes", "id_ranges"])
@pytest.mark.parametrize("bad", [{"predict": {"seq": -1}}, {"predict": {"seq": "2"}},
                                 {"predict": {"seq": 1.5}}, {"forward": {"seq": 2}},
                                 {"predict": [2]}, {"seq": 2}, [["predict", 2]]])
def test_a_tampered_bound_is_refused_on_load(modules, tmp_path, kind, bad):
    _, _, infer_path, _ = modules
    path = tmp_path / "b"
    path.mkdir()
    for name in os.listdir(infer_path):
        (path / name).write_bytes(open(os.path.join(infer_path, name), "rb").read())
    manifest = json.load(open(path / "manifest.json"))
    json.dump(dict(manifest, **{kind: bad}), open(path / "manifest.json", "w"))
    with pytest.raises(tvf.BundleError, match=kind):
        tvf.load(str(path))


@pytest.mark.parametrize("kind, bad", [("min_sizes", {"seq": 0}), ("id_ranges", {"idx": 0}),
                                       ("max_sizes", {"seq": "10"}), ("id_ranges", [1])])
def test_a_tampered_method_bound_is_refused_on_load(lm, tmp_path, kind, bad):
    infer = lm[0]
    path = infer.export(str(tmp_path / "lm"))
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    manifest["methods"]["prefill"][kind] = bad
    json.dump(manifest, open(os.path.join(path, "manifest.json"), "w"))
    with pytest.raises(tvf.BundleError, match="methods"):
        tvf.load(path)


# ---- a language model: token ids, positions, decode's runtime position ----------------------

VOCAB, CONTEXT = 13, 10


@pytest.fixture(scope="module")
def lm():
    """(inference module with prefill and decode, training module) of one small CausalLM
    over a symbolic batch and sequence length."""
    tvf.manual_seed(0)
    model = nn.CausalLM(VOCAB, context=CONTEXT, d_model=16, nhead=2, num_layers=1,
                        dim_feedforward=32)
    ids = tvf.Spec(("batch", "seq"), "int64")
    infer = tvf.compile_inference(model, ids, methods={"prefill": model.prefill_spec("batch"),
                                                       "decode": model.decode_spec("batch")})
    train = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1), inputs=ids,
                                 labels=ids)
    return infer, train


def _tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, shape).astype(np.int64)


def test_a_language_model_records_its_tables(lm):
    infer, train = lm
    assert infer.manifest["max_sizes"] == {"predict": {"seq": CONTEXT}}
    assert infer.manifest["id_ranges"] == {"predict": {"x": VOCAB}}
    assert train.manifest["max_sizes"] == {"predict": {"seq": CONTEXT}, "step": {"seq": CONTEXT}}
    assert train.manifest["id_ranges"] == {"predict": {"x": VOCAB}, "step": {"x": VOCAB}}
    methods = infer.manifest["methods"]
    assert {k: methods["prefill"][k] for k in ("min_sizes", "max_sizes", "id_ranges")} == {
        "min_sizes": {"seq": 1}, "max_sizes": {"seq": CONTEXT}, "id_ranges": {"idx": VOCAB}}
    # decode writes and reads one position: pos in 0..CONTEXT-1
    assert methods["decode"]["id_ranges"] == {"token": VOCAB, "pos": CONTEXT}
    assert "max_sizes" not in methods["decode"]


def test_sequences_longer_than_the_context_are_refused(lm, tmp_path):
    infer, train = lm
    long = _tokens((2, CONTEXT + 1))
    too_long = f"dimension 'seq' is {CONTEXT + 1} in .*at most {CONTEXT}"
    for m in (infer, tvf.load(infer.export(str(tmp_path / "lm")))):
        for call in (m.predict, m.prefill, lambda x: m.call_tensors("prefill", x)):
            with pytest.raises(tvf.ShapeError, match=too_long):
                call(long)
    for call in (lambda x: train.step(x, x), lambda x: train.loss(x, x)):
        with pytest.raises(tvf.ShapeError, match=too_long):
            call(long)
    assert infer.predict(long[:, :CONTEXT]).shape == (2, CONTEXT, VOCAB)  # the context fits


class LearnedPositions(nn.Module):
    """A learned positional embedding of 4 positions, read at positions start..start+T-1."""

    def __init__(self, start=0):
        super().__init__()
        self.start = np.array(start, np.int64)
        self.table = nn.Embedding(4, 3)

    def forward(self, x):
        return self.table(ops.positions(x, self.start))


def test_positions_past_a_table_are_a_compile_error_or_a_largest_size():
    # CausalLM checks a constant length itself; any model reading a table with positions is
    # bounded by the trace: a constant T at compile time, a symbolic one at each call
    tvf.manual_seed(0)
    with pytest.raises(ValueError, match=r"embedding: positions 1\.\.4 index a table of 4 "
                                         r"rows \(0\.\.3\)"):
        tvf.compile_inference(LearnedPositions(start=1), tvf.Spec((1, 4), "int64"))
    model = LearnedPositions(start=1)
    module = tvf.compile_inference(model, tvf.Spec((1, "seq"), "int64"))
    assert module.manifest["max_sizes"] == {"predict": {"seq": 3}}
    np.testing.assert_allclose(module.predict(np.zeros((1, 3), np.int64)),
                               module.state_dict()["table.weight"][1:4], rtol=1e-6)
    with pytest.raises(tvf.ShapeError, match="dimension 'seq' is 4 in x, but predict reads a "
                                             "table at its positions with rows for 3 "):
        module.predict(np.zeros((1, 4), np.int64))


def test_token_ids_outside_the_vocabulary_are_refused(lm):
    infer, train = lm
    ids = _tokens((2, 4))
    ids[1, 2] = VOCAB
    out_of_range = (rf"holds {VOCAB} at \(1, 2\), out of range: it indexes a table of "
                    rf"{VOCAB} rows, so it must lie in 0\.\.{VOCAB - 1}")
    for call, name in ((infer.predict, "predict: x"), (infer.prefill, "prefill: input 'idx'"),
                       (lambda x: train.step(x, _tokens((2, 4))), "step: x")):
        with pytest.raises(ValueError, match=rf"{name} {out_of_range}"):
            call(ids)
    ids[1, 2] = -1
    with pytest.raises(ValueError, match=r"predict: x holds -1 at \(1, 2\)"):
        infer.predict(ids)


def test_decode_refuses_a_position_outside_the_context(lm):
    infer, _ = lm
    _, k, v = infer.prefill(_tokens((1, 3)))
    token = _tokens((1, 1))
    for pos in (-1, CONTEXT, 2**40):
        for call in (infer.decode, lambda *a: infer.call_tensors("decode", *a)):
            with pytest.raises(ValueError, match=rf"decode: input 'pos' is {pos}, out of "
                                                 rf"range: .* 0\.\.{CONTEXT - 1}"):
                call(token, np.array(pos, np.int64), k, v)
    # device tensors are read back for the check, as generate.sample passes them
    from tvmfront._tvm import to_device
    with pytest.raises(ValueError, match="input 'token' holds"):
        infer.call_tensors("decode", to_device(np.array([[VOCAB]], np.int64)),
                           to_device(np.array(3, np.int64)), k, v)
    logits, _, _ = infer.decode(token, np.array(CONTEXT - 1, np.int64), k, v)
    assert np.isfinite(logits).all()


# ---- reductions over an empty axis ------------------------------------------------------------

class ReduceAfterFirst(nn.Module):
    """A reduction over the positions after the first: x[:, 1:] is empty at seq 1."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        return getattr(ops, self.kind)(x[:, 1:], axis=1)


def test_reductions_over_an_empty_axis_are_numpy_s_or_refused():
    # the fixed-size mean had returned uninitialised memory (another value each run), the
    # max the float's lowest value, and the schedule rule failed on both (ZeroDivisionError)
    x = np.arange(6, dtype="float32").reshape(2, 1, 3)
    fixed = (2, 1, 3)
    np.testing.assert_array_equal(tvf.compile_inference(ReduceAfterFirst("sum"), fixed)(x),
                                  np.zeros((2, 3), "float32"))
    mean = tvf.compile_inference(ReduceAfterFirst("mean"), fixed)
    assert mean.build_info["fallback_kernels"] == {}
    assert np.isnan(mean(x)).all()  # numpy and PyTorch: NaN
    with pytest.raises(ValueError, match=r"max: reducing \[2, 0, 3\] over axis \[1\] of size 0"):
        tvf.compile_inference(ReduceAfterFirst("max"), fixed)
    # over a symbolic length, the max needs seq >= 2 (x[:, 1:] is max(seq - 1, 0) long)
    module = tvf.compile_inference(ReduceAfterFirst("max"), ("batch", "seq", 3))
    assert module.manifest["min_sizes"] == {"predict": {"seq": 2}}
    with pytest.raises(tvf.ShapeError, match="dimension 'seq' is 1 in x, but predict needs "
                                             "at least 2 position"):
        module.predict(x)
    y = np.arange(18, dtype="float32").reshape(2, 3, 3)
    np.testing.assert_array_equal(module.predict(y), y[:, 1:].max(axis=1))


@pytest.mark.parametrize("kind", ["sum", "mean"])
def test_a_sum_or_mean_over_a_symbolic_size_0_is_refused(kind):
    """Its kernel never wrote the output: a sum or mean over 'seq' 0 returned whatever the
    memory held (NaN, 3e-41, another value each call)."""
    class Reduce(nn.Module):
        def forward(self, x):
            return getattr(ops, kind)(x, axis=1)

    module = tvf.compile_inference(Reduce(), inputs=tvf.Spec(("batch", "seq"), "float32"))
    x = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_allclose(module(x), getattr(np, kind)(x, axis=1))
    assert module.manifest["min_sizes"] == {"predict": {"seq": 1}}
    with pytest.raises(tvf.ShapeError, match="dimension 'seq' is 0 in x, but predict needs at "
                                             "least 1 position.*a sum, mean or max over it"):
        module(np.zeros((2, 0), "float32"))
