"""What compiled modules accept at run time: predict on outputs whose first axis is not the
batch, and class labels of any integer dtype."""

import numpy as np
import pytest

import tvmfront as tvf

nn = tvf.nn
BATCH = 2


class Tokens(nn.Module):
    """[B, 1, 4, 4] -> logits [B*4, 5]: one row per token, as language models reshape them."""

    def __init__(self):
        super().__init__()
        tvf.manual_seed(0)
        self.proj = nn.Linear(4, 5)

    def forward(self, x):
        return self.proj(tvf.ops.reshape(x, shape=(-1, 4)))


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 4, 4)).astype("float32")


def test_predict_refuses_to_split_an_output_whose_first_axis_is_not_the_batch():
    model = Tokens()
    module = tvf.compile_inference(model, inputs=(BATCH, 1, 4, 4))
    assert module.manifest["outputs"]["shape"] == [BATCH * 4, 5]
    x = _x(BATCH)
    full = module.predict(x)  # exactly the compiled batch: the whole output
    assert full.shape == (BATCH * 4, 5)
    np.testing.assert_allclose(full, model(x), rtol=1e-5, atol=1e-6)
    for n in (BATCH + 1, 2 * BATCH, 1):  # used to return the first n of the 8 rows
        with pytest.raises(tvf.ShapeError, match=r"first axis is not the batch.*exactly 2"):
            module.predict(_x(n))


@pytest.fixture(scope="module")
def classifier():
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    return tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                inputs=(4, 1, 4, 4), labels=(4,))


@pytest.mark.parametrize("dtype", ["int32", "uint8", "int16", "uint64", "int8"])
def test_labels_of_any_integer_dtype_are_cast(classifier, dtype):
    x, y = _x(4), np.array([0, 2, 1, 2])
    assert classifier.manifest["labels"]["dtype"] == "int64"
    want = classifier.loss(x, y.astype("int64"))
    assert classifier.loss(x, y.astype(dtype)) == want
    loss, grads = classifier.loss_and_grads(x, y.astype(dtype))
    assert loss == want and set(grads) == {"1.weight", "1.bias"}
    before = classifier.state_dict()
    assert classifier.step(x, y.astype(dtype), lr=0.0) == want  # lr 0: parameters unchanged
    np.testing.assert_array_equal(classifier.state_dict()["1.weight"], before["1.weight"])


def test_labels_that_are_not_integers_or_do_not_fit_are_refused(classifier):
    x = _x(4)
    with pytest.raises(tvf.ShapeError, match="labels must be integers.*got float32"):
        classifier.step(x, np.array([0, 2, 1, 2], "float32"))
    with pytest.raises(tvf.ShapeError, match="labels must be integers.*got bool"):
        classifier.loss(x, np.array([0, 1, 1, 0], bool))
    with pytest.raises(tvf.ShapeError, match="do not fit the compiled label dtype int64"):
        classifier.loss(x, np.array([0, 1, 2, 2**63], "uint64"))
    with pytest.raises(tvf.ShapeError, match=r"labels must lie in \[0, 3\)"):
        classifier.loss(x, np.array([0, 1, 2, 3], "int32"))
    with pytest.raises(tvf.ShapeError, match="expected shape"):
        classifier.loss(x, np.array([0, 1, 2], "int32"))
