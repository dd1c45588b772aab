"""What tvf.load trusts: a manifest validated as a schema, files read once as regular files
inside the bundle, the verified bytes are the loaded bytes, and Ed25519 signatures."""

import json
import os
import shutil
import signal
from contextlib import contextmanager

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.runtime import bundle, signing

nn = tvf.nn
BATCH = 2


def _mlp():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def _x():
    return np.random.default_rng(0).standard_normal((BATCH, 1, 4, 4)).astype("float32")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(path of an inference bundle, its predictions, path of a training bundle, module)."""
    root = tmp_path_factory.mktemp("trust")
    infer = tvf.compile_inference(_mlp(), inputs=(BATCH, 1, 4, 4))
    train = tvf.compile_training(_mlp(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                 inputs=(BATCH, 1, 4, 4), labels=(BATCH,))
    return (infer.export(str(root / "infer")), infer(_x()), train.export(str(root / "train")),
            infer)


@pytest.fixture
def copy(exported, tmp_path):
    """A fresh copy of the inference bundle to tamper with, and its manifest."""
    path = str(tmp_path / "b")
    shutil.copytree(exported[0], path)
    return path, json.load(open(os.path.join(path, "manifest.json")))


def _rewrite(path, manifest):
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(manifest, f)


@contextmanager
def _no_hang(seconds=20):
    """A load that would block forever (a FIFO, /dev/zero) fails the test instead."""
    def alarm(*_):
        raise TimeoutError("tvf.load hung")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---- the manifest as a schema ---------------------------------------------------------------

def test_path_names_in_the_manifest_are_refused(copy, tmp_path):
    path, manifest = copy
    (tmp_path / "x").write_bytes(b"outside")  # "../x" really exists, with the right hash
    outside = bundle.sha256(b"outside")
    for name in ("../x", "/dev/zero", "sub/module.so", ".hidden", "..", "a\\b"):
        files = dict(manifest["files"], **{name: outside})
        _rewrite(path, dict(manifest, files=files))
        with _no_hang(), pytest.raises(tvf.BundleError, match="not a plain file name"):
            tvf.load(path)


def test_required_files_must_be_listed_and_nothing_else(copy, exported):
    path, manifest = copy
    files = dict(manifest["files"])
    del files["params.safetensors"]
    _rewrite(path, dict(manifest, files=files))
    with pytest.raises(tvf.BundleError, match=r"lacks \['params.safetensors'\]"):
        tvf.load(path)
    files = dict(manifest["files"], **{"extra.bin": "0" * 64})
    _rewrite(path, dict(manifest, files=files))
    with pytest.raises(tvf.BundleError, match=r"unknown files \['extra.bin'\]"):
        tvf.load(path)
    # a training bundle needs its optimizer state listed
    train = json.load(open(os.path.join(exported[2], "manifest.json")))
    assert set(train["files"]) == {"module.so", "params.safetensors", "optimizer.safetensors"}
    del train["files"]["optimizer.safetensors"]
    _rewrite(path, train)
    with pytest.raises(tvf.BundleError, match=r"lacks \['optimizer.safetensors'\]"):
        tvf.load(path)


@pytest.mark.parametrize("change, message", [
    ({"surprise": 1}, r"unknown manifest keys \['surprise'\]"),
    ({"step": 3}, r"unknown manifest keys \['step'\] \(kind 'inference'\)"),
    ({"parameters": "all of them"}, "'parameters' must be a list"),
    ({"inputs": {"shape": [2, "a * b"], "dtype": "float32"}}, "'inputs' must be"),
    ({"inputs": {"shape": [2, 1.5], "dtype": "float32"}}, "'inputs' must be"),
    ({"outputs": {"shape": ["a * b", "x;"], "dtype": "float32"}}, "'outputs' must be"),
    ({"inputs": {"shape": [2, 16], "dtype": "float32", "name": "x"}}, "'inputs' must be"),
    ({"cpu_features": ["avx2", 3]}, "'cpu_features' must be"),
    ({"target": "llvm"}, "'target' must be"),
    ({"tvm_version": 27}, "'tvm_version' must be a string"),
    ({"kind": "other"}, "unknown module kind 'other'"),
    ({"format_version": 2}, "format version 2"),
    ({"format_version": True}, "'format_version' must be an integer"),
    ({"inputs": {"shape": [2, 16], "dtype": "float99"}}, "'inputs' must be"),
    ({"scalar_dtype": "int8"}, "'scalar_dtype' must be one of"),
])
def test_manifest_fields_are_checked(copy, change, message):
    path, manifest = copy
    _rewrite(path, dict(manifest, **change))
    with pytest.raises(tvf.BundleError, match=message):
        tvf.load(path)


@pytest.mark.parametrize("change, message", [
    # a larger class count had let labels index past the logits: a finite, wrong loss
    (lambda m: m.update(num_classes=100), "'num_classes' is 100, but the outputs have 3"),
    # finite as JSON, inf in the step's float32 lr: every parameter inf after one step
    (lambda m: m["optimizer"].update(lr=1e39), "optimizer lr 1e\\+39 does not fit the "
                                               "step's float32 scalars"),
    (lambda m: m["optimizer"].update(lr=-1), "'optimizer' must be .*lr \\(a finite number"),
], ids=["num-classes", "lr-past-float32", "lr-negative"])
def test_a_training_manifest_whose_fields_disagree_is_refused(exported, tmp_path, change,
                                                              message):
    path = str(tmp_path / "t")
    shutil.copytree(exported[2], path)
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    change(manifest)
    _rewrite(path, manifest)
    with pytest.raises(tvf.BundleError, match=message):
        tvf.load(path)


def test_missing_keys_and_bad_hashes_are_named(copy):
    path, manifest = copy
    _rewrite(path, {k: v for k, v in manifest.items() if k != "outputs"})
    with pytest.raises(tvf.BundleError, match=r"lacks \['outputs'\]"):
        tvf.load(path)
    _rewrite(path, dict(manifest, files=dict(manifest["files"], **{"module.so": "abc"})))
    with pytest.raises(tvf.BundleError, match="hash of module.so is not a SHA-256"):
        tvf.load(path)
    _rewrite(path, [manifest])
    with pytest.raises(tvf.BundleError, match="not a JSON object"):
        tvf.load(path)


def test_export_refuses_a_manifest_load_would_refuse(exported, tmp_path):
    module = exported[3]
    module.manifest["surprise"] = 1
    try:
        with pytest.raises(tvf.BundleError, match=r"unknown manifest keys \['surprise'\]"):
            module.export(str(tmp_path / "b"))
    finally:
        del module.manifest["surprise"]
    assert os.listdir(tmp_path) == []  # nothing half-written left behind


# ---- files: regular files inside the bundle, read once ------------------------------------

def test_fifos_devices_and_symlinks_are_refused_without_hanging(copy):
    path, _ = copy
    lib = os.path.join(path, "module.so")
    os.unlink(lib)
    os.mkfifo(lib)  # opening a FIFO to read blocks until a writer comes
    with _no_hang(), pytest.raises(tvf.BundleError, match="module.so is not a regular file"):
        tvf.load(path)
    os.unlink(lib)
    os.symlink("/dev/zero", lib)  # reading /dev/zero never ends
    with _no_hang(), pytest.raises(tvf.BundleError, match="cannot open module.so as a regular"):
        tvf.load(path)


def test_the_verified_bytes_are_the_loaded_bytes(copy, exported, monkeypatch):
    """Whatever happens to the bundle after its hashes were checked, what was checked is
    what runs: the library is loaded from a private copy of the verified bytes."""
    path, manifest = copy
    read = bundle.read_bundle
    loaded_from = []

    def read_then_swap(*args, **kwargs):
        result = read(*args, **kwargs)
        for name in manifest["files"]:  # an attacker swaps every file after the check
            with open(os.path.join(path, name), "wb") as f:
                f.write(b"\x7fELF not what was hashed")
        return result

    load_module = bundle.load_module

    def spy(lib_path):
        loaded_from.append((lib_path, open(lib_path, "rb").read()))
        return load_module(lib_path)

    monkeypatch.setattr(bundle, "read_bundle", read_then_swap)
    monkeypatch.setattr(bundle, "load_module", spy)
    module = tvf.load(path)
    np.testing.assert_array_equal(module(_x()), exported[1])
    (lib_path, data), = loaded_from
    assert not os.path.abspath(lib_path).startswith(os.path.abspath(path))
    assert bundle.sha256(data) == manifest["files"]["module.so"]
    assert not os.path.exists(lib_path)  # the private copy is gone once loaded


def test_a_changed_file_is_refused(copy):
    path, _ = copy
    with open(os.path.join(path, "params.safetensors"), "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    with pytest.raises(tvf.BundleError, match="params.safetensors is corrupt or was modified"):
        tvf.load(path)


# ---- signatures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    key = signing.generate_key()
    pem, pub = signing.save_key(key, str(tmp_path_factory.mktemp("keys") / "release.pem"))
    return key, pem, pub


def test_signed_bundle_loads_with_its_key_in_every_form(exported, keys, tmp_path):
    key, pem, pub = keys
    module = exported[3]
    assert oct(os.stat(pem).st_mode & 0o777) == "0o600"
    for i, sign_key in enumerate((key, pem, open(pem, "rb").read(),
                                  key.private_bytes_raw())):
        path = module.export(str(tmp_path / f"b{i}"), sign_key=sign_key)
        assert "manifest.sig" in os.listdir(path)
        for trusted in ([pub], [signing.public_key_bytes(key)], [key.public_key()], pub):
            np.testing.assert_array_equal(tvf.load(path, trusted_keys=trusted)(_x()),
                                          exported[1])


def test_missing_bad_or_untrusted_signatures_are_refused(exported, keys, tmp_path):
    key, _, pub = keys
    module = exported[3]
    unsigned = module.export(str(tmp_path / "unsigned"))
    with pytest.raises(tvf.BundleError, match="not signed"):
        tvf.load(unsigned, trusted_keys=[pub])
    assert tvf.load(unsigned) is not None  # no keys given: hashes only

    signed = module.export(str(tmp_path / "signed"), sign_key=key)
    with pytest.raises(tvf.BundleError, match="not among trusted_keys"):
        tvf.load(signed, trusted_keys=[signing.generate_key().public_key()])
    with pytest.raises(tvf.BundleError, match="trusted_keys is empty"):
        tvf.load(signed, trusted_keys=[])

    manifest_path = os.path.join(signed, "manifest.json")
    original = open(manifest_path, "rb").read()
    manifest = json.loads(original)
    manifest["outputs"]["shape"] = [BATCH, 4]  # any change to the signed manifest
    _rewrite(signed, manifest)
    with pytest.raises(tvf.BundleError, match="bad signature"):
        tvf.load(signed, trusted_keys=[pub])

    open(manifest_path, "wb").write(original)
    with open(os.path.join(signed, "params.safetensors"), "ab") as f:
        f.write(b" ")  # the manifest is intact, so the signature holds; the hash does not
    with pytest.raises(tvf.BundleError, match="params.safetensors is corrupt or was modified"):
        tvf.load(signed, trusted_keys=[pub])

    open(os.path.join(signed, "manifest.sig"), "w").write("{not json")
    with pytest.raises(tvf.BundleError, match="malformed"):
        tvf.load(signed, trusted_keys=[pub])


def test_a_bad_sign_key_fails_before_anything_is_written(exported, tmp_path):
    with pytest.raises(tvf.BundleError, match="sign_key must be an Ed25519 private key"):
        exported[3].export(str(tmp_path / "b"), sign_key=1234)
    with pytest.raises(tvf.BundleError, match="not a usable Ed25519 private key"):
        exported[3].export(str(tmp_path / "b"), sign_key=b"-----BEGIN nothing-----")
    assert os.listdir(tmp_path) == []
