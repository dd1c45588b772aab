"""Bad input gets a clear error naming the problem, never a crash."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tvmfront as tvf

nn = tvf.nn
te = tvf.te


@pytest.fixture(scope="module")
def mlp():
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1, momentum=0.9),
                                  inputs=(4, 1, 4, 4), labels=(4,))
    return module


@pytest.fixture()
def bundle(mlp, tmp_path):
    return mlp.export(str(tmp_path / "bundle"))


def _xy():
    return np.zeros((4, 1, 4, 4), "float32"), np.array([0, 1, 2, 0])


def test_wrong_input_shape(mlp):
    x, y = _xy()
    with pytest.raises(tvf.ShapeError, match=r"x: expected shape \(4, 1, 4, 4\) dtype float32, "
                                             r"got shape \(3, 1, 4, 4\)"):
        mlp.step(x[:3], y)


def test_wrong_input_dtype(mlp):
    x, y = _xy()
    with pytest.raises(tvf.ShapeError, match="got shape .* dtype float64"):
        mlp.step(x.astype("float64"), y)
    with pytest.raises(tvf.ShapeError, match="y: labels must be integers"):
        mlp.step(x, y.astype("float32"))  # class ids are integers


def test_labels_out_of_range(mlp):
    x, y = _xy()
    with pytest.raises(tvf.ShapeError, match=r"labels must lie in \[0, 3\)"):
        mlp.step(x, np.array([0, 1, 3, 0]))


def test_predict_wrong_trailing_shape(mlp):
    with pytest.raises(tvf.ShapeError, match=r"expected shape \('N', 1, 4, 4\)"):
        mlp.predict(np.zeros((5, 1, 4, 5), "float32"))


def test_inference_wrong_shape():
    module = tvf.compile_inference(nn.Sequential(nn.Linear(3, 2)), inputs=(2, 3))
    with pytest.raises(tvf.ShapeError, match=r"expected shape \(2, 3\)"):
        module(np.zeros((2, 4), "float32"))
    with pytest.raises(tvf.ShapeError, match="expected a numpy array"):
        module([[0.0, 1.0, 2.0]] * 2)


def test_bad_learning_rate(mlp):
    x, y = _xy()
    with pytest.raises(ValueError, match="learning rate"):
        mlp.step(x, y, lr=float("nan"))


def test_underivable_op_in_training_names_the_op():
    @tvf.op
    def pick_first(x, idx):
        # x[b, idx[b]]: a data-dependent gather, beyond what autodiff derives
        return te.compute((x.shape[0], 1), lambda b, _: x[b, idx[b]], name="pick_first")

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return pick_first(self.fc(x), np.array([1, 0], "int64"))

    expected = r"cannot derive the gradient of op 'pick_first': index \[b, idx\[b\]\].*\.grad"
    with pytest.raises(tvf.GradientError, match=expected):
        tvf.compile_training(Model(), nn.MSELoss(), tvf.optim.SGD(0.1), inputs=(2, 3),
                             labels=(2, 1))
    # ...while inference needs no gradient at all
    module = tvf.compile_inference(Model(), inputs=(2, 3))
    assert module(np.ones((2, 3), "float32")).shape == (2, 1)


def test_unknown_target_lists_valid_names():
    with pytest.raises(tvf.TargetError, match="unknown target 'tpu'; valid names: .*x86"):
        tvf.compile_inference(nn.Sequential(nn.Linear(3, 2)), inputs=(2, 3), target="tpu")
    with pytest.raises(tvf.TargetError, match="invalid TVM target dict"):
        tvf.compile_inference(nn.Sequential(nn.Linear(3, 2)), inputs=(2, 3),
                              target={"kind": "nonsense"})


@pytest.mark.parametrize("name", ["params.safetensors", "optimizer.safetensors", "module.so"])
def test_bundle_missing_file(bundle, name):
    os.remove(os.path.join(bundle, name))
    with pytest.raises(tvf.BundleError, match=f"missing file {name}"):
        tvf.load(bundle)


@pytest.mark.parametrize("name", ["params.safetensors", "optimizer.safetensors", "module.so"])
def test_bundle_truncated_file(bundle, name):
    path = os.path.join(bundle, name)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(tvf.BundleError, match=f"{name} is corrupt or was modified"):
        tvf.load(bundle)


def _rehashed(bundle, name, content):
    """Write `content` as the bundle's `name` and record its hash in the manifest, as someone
    who rewrote both would: only the reader's own checks of the content remain."""
    path = os.path.join(bundle, name)
    open(path, "wb").write(content)
    mpath = os.path.join(bundle, "manifest.json")
    manifest = json.load(open(mpath))
    manifest["files"][name] = hashlib.sha256(content).hexdigest()
    json.dump(manifest, open(mpath, "w"))


@pytest.mark.parametrize("cut,message", [
    (3, "module.so: its section headers lie outside the file"),
    (None, "module.so is not an ELF file")])
def test_bundle_truncated_library_with_its_hash_rewritten(bundle, cut, message):
    """dlopen maps a truncated library and the process dies of SIGBUS on its first page past
    the end: the loader checks the ELF structure of the bytes first (in a subprocess, so a
    regression shows as a signal, not a dead test runner)."""
    data = open(os.path.join(bundle, "module.so"), "rb").read()
    _rehashed(bundle, "module.so", data[:len(data) // cut] if cut else b"hello" * 100)
    code = f"import tvmfront as tvf; tvf.load({bundle!r})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    assert "BundleError" in run.stderr and message in run.stderr, run.stderr[-2000:]


def test_bundle_tampered_parameters(bundle):
    path = os.path.join(bundle, "params.safetensors")
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0xFF  # flip bits of the last weight byte
    open(path, "wb").write(bytes(data))
    with pytest.raises(tvf.BundleError, match="params.safetensors is corrupt or was modified"):
        tvf.load(bundle)


def test_bundle_bad_manifest(bundle):
    open(os.path.join(bundle, "manifest.json"), "w").write("{not json")
    with pytest.raises(tvf.BundleError, match="unreadable manifest"):
        tvf.load(bundle)
    os.remove(os.path.join(bundle, "manifest.json"))
    with pytest.raises(tvf.BundleError, match="missing manifest.json"):
        tvf.load(bundle)


def test_bundle_from_other_tvm_version(bundle):
    mpath = os.path.join(bundle, "manifest.json")
    manifest = json.load(open(mpath))
    manifest["tvm_version"] = "0.1.0"
    json.dump(manifest, open(mpath, "w"))
    with pytest.raises(tvf.BundleError, match="built with TVM 0.1.0"):
        tvf.load(bundle)


def test_load_missing_directory(tmp_path):
    with pytest.raises(tvf.BundleError, match="no such bundle directory"):
        tvf.load(str(tmp_path / "nothing"))


def test_export_refuses_to_overwrite_foreign_directory(mlp, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(tvf.BundleError, match="not a tvmfront bundle; refusing"):
        mlp.export(str(foreign))
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # the temporary bundle was cleaned up


def test_load_state_dict_checks_shapes(mlp):
    state = mlp.state_dict()
    state["1.weight"] = np.zeros((2, 16), "float32")
    with pytest.raises(tvf.ShapeError, match="parameter '1.weight': expected shape"):
        mlp.load_state_dict(state)


def test_model_load_state_dict_checks(tmp_path):
    model = nn.Linear(3, 2)
    with pytest.raises(KeyError, match="missing"):
        model.load_state_dict({"weight": np.zeros((2, 3), "float32")})
    with pytest.raises(tvf.ShapeError, match="'weight' expects shape"):
        model.load_state_dict({"weight": np.zeros((3, 3), "float32"),
                               "bias": np.zeros(2, "float32")})
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("transpose_b, b_shape, layout", [
    (False, (2, 5, 3), r"\[\.\.\., K, N\]"),
    (True, (2, 5, 3), r"\[\.\.\., N, K\] \(transpose_b\)")])
def test_batch_matmul_names_the_layout_it_expects(transpose_b, b_shape, layout):
    a = np.ones((2, 3, 4), "float32")
    with pytest.raises(ValueError, match=r"batch_matmul expects \[\.\.\., M, K\] @ " + layout):
        tvf.ops.batch_matmul(a, np.ones(b_shape, "float32"), transpose_b=transpose_b)
