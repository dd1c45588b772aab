"""Export -> load (also in a fresh process) -> identical predictions and next-step losses."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import tvmfront as tvf

nn = tvf.nn
BATCH = 8


def _model():
    tvf.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64, 10))


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((BATCH, 1, 8, 8)).astype("float32"),
             rng.integers(0, 10, BATCH).astype("int64")) for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A module trained 3 steps with Adam, exported; plus what it does next."""
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                  inputs=(BATCH, 1, 8, 8), labels=(BATCH,))
    for x, y in _batches(3):
        module.step(x, y)
    path = str(tmp_path_factory.mktemp("bundles") / "cnn")
    module.export(path)
    x_eval = _batches(1, seed=7)[0][0]
    expected_pred = module.predict(x_eval)
    next_batches = _batches(3, seed=11)
    expected_losses = [module.step(x, y, lr=5e-3) for x, y in next_batches]
    return path, x_eval, expected_pred, next_batches, expected_losses, module


_CHILD = r"""
import json, sys
import numpy as np
import tvmfront as tvf
path, data = sys.argv[1], np.load(sys.argv[2], allow_pickle=False)
m = tvf.load(path)
np.save(sys.argv[3], m.predict(data["x_eval"]), allow_pickle=False)
losses = [m.step(data[f"x{i}"], data[f"y{i}"], lr=5e-3) for i in range(3)]
print(json.dumps({"kind": type(m).__name__, "step": m.step_count, "losses": losses}))
"""


def test_reload_in_fresh_process_continues_exactly(trained, tmp_path):
    path, x_eval, expected_pred, next_batches, expected_losses, _ = trained
    data = {"x_eval": x_eval}
    for i, (x, y) in enumerate(next_batches):
        data[f"x{i}"], data[f"y{i}"] = x, y
    np.savez(tmp_path / "data.npz", **data)
    out = subprocess.run([sys.executable, "-c", _CHILD, path, str(tmp_path / "data.npz"),
                          str(tmp_path / "pred.npy")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["kind"] == "TrainingModule"
    assert result["step"] == 6
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), expected_pred)
    assert result["losses"] == expected_losses


def test_manifest_records_versions_specs_optimizer_and_hashes(trained):
    path = trained[0]
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    assert manifest["kind"] == "training"
    assert manifest["tvmfront_version"] == tvf.__version__
    assert manifest["tvm_version"].startswith("0.27")
    assert manifest["target"]["kind"] == "llvm"
    assert {"sse", "sse2"} <= set(manifest["cpu_features"])  # what the code needs of the CPU
    assert manifest["inputs"] == {"shape": [BATCH, 1, 8, 8], "dtype": "float32"}
    assert manifest["labels"] == {"shape": [BATCH], "dtype": "int64"}
    assert [p["name"] for p in manifest["parameters"]] == ["0.weight", "0.bias", "4.weight",
                                                           "4.bias"]
    assert manifest["parameters"][0]["shape"] == [4, 1, 3, 3]
    assert manifest["optimizer"]["name"] == "Adam"
    assert manifest["optimizer"]["hyperparameters"]["betas"] == [0.9, 0.999]
    assert len(manifest["optimizer"]["state"]) == 8  # mu and nu per parameter
    assert manifest["step"] == 3
    assert set(manifest["files"]) == {"module.so", "params.safetensors", "optimizer.safetensors"}
    assert all(len(h) == 64 for h in manifest["files"].values())


def test_no_pickle_in_bundle(trained):
    path = trained[0]
    for name in ("params.safetensors", "optimizer.safetensors"):
        head = open(os.path.join(path, name), "rb").read(2)
        assert head != b"\x80\x04" and head != b"\x80\x05"  # pickle protocol 4/5 magic


def test_loaded_module_reexports_and_overwrites_atomically(trained, tmp_path):
    path = trained[0]
    loaded = tvf.load(path)
    again = loaded.export(str(tmp_path / "copy"))
    loaded.export(again)  # overwrite an existing bundle in place
    assert sorted(os.listdir(tmp_path)) == ["copy"]  # no temporary leftovers
    reloaded = tvf.load(again)
    x = _batches(1, seed=7)[0][0]
    np.testing.assert_array_equal(reloaded.predict(x), loaded.predict(x))


def test_reexport_keeps_the_users_files_and_the_folders_mode(trained, tmp_path):
    """What the user put beside a bundle's files survives a re-export into its folder (it was
    deleted), a training bundle's optimizer state does not outlive it as an inference one,
    and the folder has an ordinary mode (mkdtemp's 0700 had made it private)."""
    loaded = tvf.load(trained[0])
    path = loaded.export(str(tmp_path / "b"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    (tmp_path / "b" / "vocab.txt").write_text("a b c")
    (tmp_path / "b" / "notes").mkdir()
    (tmp_path / "b" / "notes" / "card.md").write_text("# model")
    os.symlink("vocab.txt", tmp_path / "b" / "latest-vocab")
    os.chmod(path, 0o750)
    inference = tvf.compile_inference(_model(), inputs=(2, 1, 8, 8))
    inference.export(path)
    assert sorted(os.listdir(path)) == ["latest-vocab", "manifest.json", "module.so", "notes",
                                        "params.safetensors", "vocab.txt"]
    assert (tmp_path / "b" / "notes" / "card.md").read_text() == "# model"
    assert os.readlink(tmp_path / "b" / "latest-vocab") == "vocab.txt"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o750
    assert isinstance(tvf.load(path), tvf.InferenceModule)
    assert sorted(os.listdir(tmp_path)) == ["b"]  # no temporary leftovers


def test_predict_handles_any_batch_count(trained):
    module = trained[5]
    x = np.random.default_rng(0).standard_normal((BATCH * 2 + 3, 1, 8, 8)).astype("float32")
    full = module.predict(x)
    assert full.shape == (BATCH * 2 + 3, 10)
    np.testing.assert_array_equal(full[:BATCH], module.predict(x[:BATCH]))
    np.testing.assert_allclose(full[-3:], module.predict(x[-3:]), rtol=1e-6)


def test_inference_bundle_round_trip(tmp_path):
    model = _model()
    module = tvf.compile_inference(model, inputs=(2, 1, 8, 8))
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype("float32")
    y = module(x)
    eager = model(x)  # the same model run op by op on numpy
    np.testing.assert_allclose(y, eager, rtol=1e-5, atol=1e-6)
    module.export(str(tmp_path / "inf"))
    loaded = tvf.load(str(tmp_path / "inf"))
    assert isinstance(loaded, tvf.InferenceModule)
    np.testing.assert_array_equal(loaded(x), y)
    assert "optimizer.safetensors" not in os.listdir(tmp_path / "inf")


def test_state_dict_round_trip_into_model(trained):
    module = trained[5]
    model = _model()
    model.load_state_dict(module.state_dict())
    x = _batches(1, seed=7)[0][0]
    np.testing.assert_allclose(model(x), module.predict(x), rtol=1e-5, atol=1e-6)
