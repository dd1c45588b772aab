"""ARM (aarch64) bundles: cross-compiled here, run under qemu-aarch64-static with the aarch64
TVM runtime, and compared with the x86 build of the same model.

scripts/test.sh runs scripts/setup_arm.sh first (qemu, the cross compiler, an aarch64 sysroot
and the aarch64 wheels); without them (offline) these tests skip and print why.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.testing import qemu as cross
from tvmfront._tvm import TVM_VERSION, cross_compiler_name

from _skip import skip_loudly

nn = tvf.nn
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 8
STEPS = 3
ELF_MACHINE = {183: "aarch64", 62: "x86_64"}


def _skip(request, reason):
    skip_loudly(request, f"skipping ARM tests: {reason}")


def _elf_machine(path):
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return ELF_MACHINE.get(int.from_bytes(head[18:20], "little"), "other")


def _model():
    tvf.manual_seed(5)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 10))


def _arrays():
    rng = np.random.default_rng(0)
    arrays = {"x_eval": rng.standard_normal((BATCH + 3, 1, 8, 8)).astype("float32")}
    for i in range(STEPS):
        arrays[f"x{i}"] = rng.standard_normal((BATCH, 1, 8, 8)).astype("float32")
        arrays[f"y{i}"] = rng.integers(0, 10, BATCH).astype("int64")
    return arrays


def _compile(target):
    train = tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                 inputs=(BATCH, 1, 8, 8), labels=(BATCH,), target=target)
    infer = tvf.compile_inference(_model(), inputs=(BATCH, 1, 8, 8), target=target)
    return train, infer


@pytest.fixture(scope="module")
def cross_cxx(request):
    cxx = cross_compiler_name("aarch64")
    if shutil.which(cxx) is None:
        try:  # installs it (and the rest) when online; idempotent
            cross.setup_arm()
        except cross.ArmUnavailable as err:
            _skip(request, f"no aarch64 cross compiler ({cxx}): {err}")
    return cxx


@pytest.fixture(scope="module")
def arm_env(request, cross_cxx):
    try:
        return cross.setup_arm()
    except cross.ArmUnavailable as err:
        _skip(request, str(err))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, cross_cxx):
    """x86 reference results, and the ARM builds of the same model exported."""
    arrays = _arrays()
    train86, infer86 = _compile("x86")
    reference = {"pred": infer86.predict(arrays["x_eval"]),
                 "losses": [train86.step(arrays[f"x{i}"], arrays[f"y{i}"]) for i in range(STEPS)],
                 "params": train86.state_dict()}
    train_arm, infer_arm = _compile("arm")
    root = tmp_path_factory.mktemp("arm")
    paths = {"train": train_arm.export(str(root / "train")),
             "infer": infer_arm.export(str(root / "infer"))}
    return dict(arrays=arrays, reference=reference, paths=paths, root=root,
                modules=(train_arm, infer_arm))


@pytest.fixture(scope="module")
def qemu_results(bundles, arm_env):
    after = str(bundles["root"] / "train_after_steps")
    jobs = [{"bundle": bundles["paths"]["infer"], "op": "predict", "x": "x_eval", "out": "pred"},
            {"bundle": bundles["paths"]["train"], "op": "steps", "out": "losses",
             "x": [f"x{i}" for i in range(STEPS)], "y": [f"y{i}" for i in range(STEPS)],
             "export": after}]
    outputs, report = cross.run_bundles_aarch64(jobs, bundles["arrays"])
    print(f"qemu run: {report}")
    return outputs, report, after


def test_arm_bundles_are_aarch64_libraries(bundles):
    for name, path in bundles["paths"].items():
        assert _elf_machine(os.path.join(path, "module.so")) == "aarch64", name
        manifest = json.load(open(os.path.join(path, "manifest.json")))
        assert manifest["target_arch"] == "aarch64"
        assert manifest["target_key"] == f"aarch64-neon-tvm{TVM_VERSION}"
        assert manifest["target"]["mtriple"] == "aarch64-linux-gnu"


def test_cross_compiled_module_refuses_to_run_here(bundles):
    train, infer = bundles["modules"]
    x, y = bundles["arrays"]["x0"], bundles["arrays"]["y0"]
    for call in (lambda: train.step(x, y), lambda: train.predict(x), lambda: infer(x),
                 lambda: infer.predict(x), lambda: train.loss(x, y)):
        with pytest.raises(tvf.TargetError, match="compiled for aarch64 .* load the bundle .* "
                                                  "on an aarch64 device"):
            call()
    assert not train.runnable and "not runnable on this machine" in repr(train)
    # its weights are still there to read and replace
    state = train.state_dict()
    infer.load_state_dict(state)
    np.testing.assert_array_equal(infer.state_dict()["0.weight"], state["0.weight"])
    with pytest.raises(tvf.TargetError, match=r"cannot load this bundle here: .*aarch64"):
        tvf.load(bundles["paths"]["train"])


@pytest.mark.slow
def test_arm_inference_matches_x86(bundles, qemu_results):
    outputs, report, _ = qemu_results
    assert report["machine"] == "aarch64"
    np.testing.assert_allclose(outputs["pred"], bundles["reference"]["pred"], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.slow
def test_arm_training_steps_match_x86(bundles, qemu_results):
    outputs, _, after = qemu_results
    np.testing.assert_allclose(outputs["losses"], bundles["reference"]["losses"], rtol=1e-5)
    # The bundle re-exported on the aarch64 side after its steps carries the same weights
    # as the x86 module after the same steps (read here without loading the aarch64 library).
    manifest = json.load(open(os.path.join(after, "manifest.json")))
    assert manifest["step"] == STEPS
    from safetensors.numpy import load_file

    params = load_file(os.path.join(after, "params.safetensors"))
    for name, value in bundles["reference"]["params"].items():
        np.testing.assert_allclose(params[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_cross_compile_example(arm_env, tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "cross_compile_arm.py"),
                          "--epochs", "2", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["arm_inference", "arm_training"]
    for name in ("arm_inference", "arm_training"):
        assert _elf_machine(str(tmp_path / "out" / name / "module.so")) == "aarch64"
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("arm_matches_x86=True"), out.stdout[-2000:]


@pytest.mark.slow
def test_arm_kernels_flush_denormals(arm_env, tmp_path):
    """tvmfront.denormals on AArch64 (FPCR.FZ, set and restored by each kernel): a product
    below float32's smallest normal comes out zero under qemu, as on x86."""
    from test_denormals import SCALE, TINY, Scale

    # (a parallel kernel; here TVM's pool starts inside it, and its threads inherit the mode:
    # test_denormals checks on x86 that a pool started before sets it in each task)
    shape = (512, 1024)
    module = tvf.compile_inference(Scale(shape[-1]), inputs=shape, target="arm")
    path = module.export(str(tmp_path / "scale"))
    arrays = {"x": np.full(shape, TINY, "float32")}
    outputs, _ = cross.run_bundles_aarch64(
        [{"bundle": path, "op": "predict", "x": "x", "out": "y"}], arrays)
    assert np.float32(TINY * SCALE) > 0  # denormal, not zero, in IEEE arithmetic
    assert (outputs["y"] == 0).all(), outputs["y"][:2, :4]
