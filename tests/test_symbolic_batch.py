"""Any batch size: one compiled step and one inference module over a symbolic batch."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import nn
from tvmfront.errors import ShapeError


def _mlp():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, n)


@pytest.fixture(scope="module")
def symbolic():
    return tvf.compile_training(_mlp(), nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                inputs=("batch", 6), labels=("batch",))


def test_manifest_records_the_symbolic_dimension(symbolic):
    assert symbolic.manifest["inputs"]["shape"] == ["batch", 6]
    assert symbolic.manifest["labels"]["shape"] == ["batch"]
    assert symbolic.manifest["outputs"]["shape"] == ["batch", 3]
    assert symbolic.batch_size is None


@pytest.mark.parametrize("n", [1, 5, 8])
def test_each_batch_size_trains_as_a_fixed_size_step(n):
    """Losses and parameters after two steps equal those of a step compiled for that size."""
    sym = tvf.compile_training(_mlp(), nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                               inputs=("batch", 6), labels=("batch",))
    fixed = tvf.compile_training(_mlp(), nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                 inputs=(n, 6), labels=(n,))
    for seed in (1, 2):
        x, y = _data(n, seed)
        np.testing.assert_allclose(sym.step(x, y), fixed.step(x, y), rtol=1e-6)
    for name, value in fixed.state_dict().items():
        np.testing.assert_allclose(sym.state_dict()[name], value, rtol=1e-5, atol=1e-7,
                                   err_msg=name)


def test_predict_runs_any_count_without_padding(symbolic):
    x, _ = _data(7)
    whole = symbolic.predict(x)
    assert whole.shape == (7, 3)
    one_by_one = np.concatenate([symbolic.predict(x[i:i + 1]) for i in range(7)])
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-6)
    np.testing.assert_allclose(symbolic.predict(x, batch_size=3), whole, rtol=1e-6)
    assert symbolic.predict(x[:0]).shape == (0, 3)


def test_one_size_per_symbolic_dimension(symbolic):
    x, y = _data(4)
    with pytest.raises(ShapeError, match="'batch'.*is 3, but it is 4 in x"):
        symbolic.step(x, y[:3])


def test_inference_module_and_bundle_take_any_batch(tmp_path):
    model = _mlp()
    inf = tvf.compile_inference(model, ("n", 6))
    x, _ = _data(5)
    want = np.concatenate([inf(x[:2]), inf(x[2:])])
    np.testing.assert_allclose(inf(x), want, rtol=1e-6)
    loaded = tvf.load(inf.export(tmp_path / "b"))
    assert loaded.manifest["inputs"]["shape"] == ["n", 6]
    np.testing.assert_allclose(loaded(x[:3]), want[:3], rtol=1e-6)
    with pytest.raises(ShapeError, match=r"expected shape \('n', 6\)"):
        loaded(x[:, :5])


@pytest.mark.parametrize("bad", [("batch size", 6), ("1b", 6), (2.5, 6)])
def test_a_symbolic_dimension_is_an_identifier(bad):
    with pytest.raises(ShapeError, match="dimension"):
        tvf.TensorSpec(bad)


def test_spec_names_batch_and_sequence():
    spec = tvf.Spec(("batch", "seq"), "int64")
    assert spec.shape == ("batch", "seq") and spec.symbolic and spec.dtype == "int64"
    assert spec.to_json() == {"shape": ["batch", "seq"], "dtype": "int64"}


def test_trainer_fit_trains_the_last_partial_batch():
    """50 samples in batches of 16: four steps an epoch (16, 16, 16, 2), the same parameters
    as stepping a hand loop over the same batches."""
    def compiled():
        return tvf.compile_training(_mlp(), nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                    inputs=("batch", 6), labels=("batch",))

    x, y = _data(50, seed=3)
    fitted, by_hand = compiled(), compiled()
    tvf.Trainer(fitted, seed=5, progress=False).fit(x, y, epochs=2, batch_size=16)
    assert fitted.step_count == 8
    sizes = []
    for epoch in range(2):
        for xb, yb in tvf.data.batches(x, y, 16, shuffle=True, seed=5 + epoch, drop_last=False):
            sizes.append(len(xb))
            by_hand.step(xb, yb)
    assert sizes == [16, 16, 16, 2] * 2
    for name, value in by_hand.state_dict().items():
        np.testing.assert_array_equal(fitted.state_dict()[name], value, err_msg=name)


def test_a_merged_symbolic_dimension_on_the_gradient_path_is_a_clear_error():
    """TVM 0.27's Gradient fails with a bare KeyError on a kernel that sees `b` only inside
    b * t; tvmfront names the op and the way out. Inference through it works."""
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            b, t, e = x.shape
            return tvf.ops.reshape(self.lin(tvf.ops.reshape(x, shape=(-1, e))), shape=(b, t, 3))

    model = Flat()
    inf = tvf.compile_inference(model, ("b", "t", 4))
    assert inf(np.ones((2, 5, 4), "float32")).shape == (2, 5, 3)
    assert inf.manifest["outputs"]["shape"] == ["b", "t", 3]
    with pytest.raises(tvf.GradientError, match=r"op 'dense' on shapes \[\('b \* t', 4\)"):
        tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(0.1), inputs=("b", "t", 4),
                             labels=("b", "t", 3))
