"""The public API's edges: specs from example arrays, bad specs and unknown keywords named in
the error, labels of any integer dtype."""

import numpy as np
import pytest

import tvmfront as tvf

nn = tvf.nn


def _model():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _xy(dtype="int64"):
    rng = np.random.default_rng(0)
    return rng.standard_normal((6, 4)).astype("float32"), (np.arange(6) % 3).astype(dtype)


def test_example_arrays_give_shape_and_dtype():
    x, y = _xy("int32")
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=x, labels=y)
    assert module.manifest["inputs"] == {"shape": [6, 4], "dtype": "float32"}
    assert module.manifest["labels"] == {"shape": [6], "dtype": "int32"}
    assert np.isfinite(module.step(x, y))
    infer = tvf.compile_inference(_model(), inputs=x[:2])
    assert infer(x[:2]).shape == (2, 3)


@pytest.mark.parametrize("inputs,labels,match", [
    ([np.zeros((6, 4), "float32")], (6,), "inputs: got a list holding an array; the compiled step "
                                           "takes one array here: pass the array itself"),
    ((np.zeros((6, 4), "float32"),), (6,), "inputs: got a tuple holding an array"),
    ("6x4", (6,), "inputs: expected a shape tuple, a TensorSpec or an example array, got str"),
    ((6, 4.5), (6,), r"inputs: shape \(6, 4.5\): every dimension must be an int"),
    ((6, -4), (6,), "inputs: negative dimension"),
    ((6, 4), {"shap": (6,)}, "labels: a spec dict holds 'shape'"),
    ((6, 4), {"shape": (6,), "dtype": "int65"}, "labels: unknown dtype 'int65'"),
    ((6, 4), None, "labels: expected a shape tuple"),
])
def test_bad_specs_name_the_argument(inputs, labels, match):
    with pytest.raises(tvf.ShapeError, match=match):
        tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                             inputs=inputs, labels=labels)


def test_bad_inference_spec_names_the_argument():
    with pytest.raises(tvf.ShapeError, match="inputs: got a list holding an array"):
        tvf.compile_inference(_model(), inputs=[np.zeros((6, 4), "float32")])


@pytest.fixture(scope="module")
def trained():
    x, y = _xy()
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=x, labels=y)
    return module, x, y


@pytest.mark.parametrize("call,name", [
    (lambda m: tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                    inputs=(6, 4), labels=(6,), input=(6, 4)), "input"),
    (lambda m: tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                    inputs=(6, 4), labels=(6,), lr=0.1), "lr"),
    (lambda m: tvf.compile_inference(_model(), inputs=(6, 4), label=(6,)), "label"),
    (lambda m: tvf.Trainer(m, sed=0), "sed"),
    (lambda m: tvf.Trainer(m).fit(*_xy(), epoch=1), "epoch"),
    (lambda m: tvf.optim.SGD(0.1, momentun=0.9), "momentun"),
    (lambda m: tvf.optim.Adam(0.1, beta=(0.9, 0.99)), "beta"),
    (lambda m: nn.Linear(4, 3, bais=False), "bais"),
    (lambda m: nn.Conv2d(1, 2, 3, pad=1), "pad"),
    (lambda m: nn.LayerNorm(4, epsilon=1e-5), "epsilon"),
    (lambda m: nn.Parameter(np.zeros(3), trainable=False), "trainable"),
])
def test_unknown_keywords_are_errors_naming_them(trained, call, name):
    with pytest.raises(TypeError, match=f"'{name}'"):
        call(trained[0])


@pytest.mark.parametrize("dtype", ["int32", "int8", "uint8"])
def test_integer_labels_of_any_dtype_train_like_int64(trained, dtype):
    reference, x, y = trained
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=x, labels=tvf.TensorSpec((6,), dtype))
    module.load_state_dict(reference.state_dict())
    want = reference.loss(x, y)
    assert module.loss(x, y.astype(dtype)) == pytest.approx(want, rel=1e-6)
    assert module.step(x, y.astype(dtype)) == pytest.approx(want, rel=1e-6)


def test_mse_targets_of_another_shape_are_a_shape_error_as_cross_entropys_labels():
    """The same mistake (labels that do not fit the prediction) is one error type for both
    losses: MSELoss raised a bare ValueError where CrossEntropyLoss raises a ShapeError."""
    with pytest.raises(tvf.ShapeError, match=r"mse_loss: pred \[6, 3\] and target \[6\] differ"):
        tvf.compile_training(_model(), nn.MSELoss(), tvf.optim.SGD(0.1),
                             inputs=(6, 4), labels=(6,))


def test_float_labels_for_cross_entropy_are_refused():
    with pytest.raises(tvf.ShapeError, match="labels: CrossEntropyLoss takes integer class ids, "
                                             "got dtype float32"):
        tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                             inputs=(6, 4), labels=tvf.TensorSpec((6,), "float32"))


def _masked(a):
    return np.ma.array(a, mask=np.arange(a.size).reshape(a.shape) % 2 == 0)


@pytest.mark.parametrize("call, name", [
    (lambda m, x, y: m.step(_masked(x), y), "x"),
    (lambda m, x, y: m.step(x, _masked(y)), "y"),
    (lambda m, x, y: m.load_state_dict({k: _masked(np.asarray(v))
                                        for k, v in m.state_dict().items()}), "parameter"),
    (lambda m, x, y: tvf.compile_inference(_model(), inputs=x).predict(_masked(x)), "x"),
    (lambda m, x, y: nn.Linear(4, 3)(_masked(x)), "op .dense."),
])
def test_masked_arrays_are_refused_not_read_without_their_mask(trained, call, name):
    """A masked array passed the ndarray check and its masked values were read as they are."""
    module, x, y = trained
    with pytest.raises(TypeError, match=f"{name}.*a masked array; its mask would be ignored"):
        call(module, x, y)
