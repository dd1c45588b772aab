"""Named targets, target keys, and CUDA builds on a machine without a GPU."""

import json
import os
import re

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import records
from tvmfront import target as tgt
from tvmfront._tvm import TVM_VERSION, cuda_device_arch, device_available, host_arch

nn = tvf.nn
BATCH = 4


def test_targets_lists_every_name():
    assert {"x86", "arm", "aarch64", "cuda", "x86:sse", "x86:avx2", "x86:avx512"} <= \
        set(tvf.targets())


@pytest.mark.parametrize("name, cls, mcpu", [("x86:sse", "sse", "x86-64"),
                                             ("x86:avx2", "avx2", "x86-64-v3"),
                                             ("x86:avx512", "avx512", "x86-64-v4")])
def test_portable_x86_classes_key_as_their_class_from_any_machine(name, cls, mcpu):
    """A feature class names no CPU model and carries its triple, so it builds the same code
    on any machine, and its key is the class's key (the format of every other key)."""
    assert tgt.target_key(name) == f"x86_64-{cls}-tvm{TVM_VERSION}"
    assert tgt.x86_class(name) == cls
    raw = tgt.target_json(name)
    assert raw["mcpu"] == mcpu and raw["mtriple"] == "x86_64-linux-gnu"
    assert tgt.target_architecture(name) == "x86_64"


def test_named_targets_resolve():
    x86 = tgt.resolve_target("x86")
    assert x86.kind.name == "llvm"
    if host_arch() == "x86_64":
        assert str(x86.attrs["mcpu"])  # the host CPU, detected
    for name in ("arm", "aarch64"):
        arm = tgt.target_json(name)
        assert arm["kind"] == "llvm"
        assert arm["mtriple"] == "aarch64-linux-gnu"
        assert list(arm["mattr"]) == ["+neon"]
    assert tgt.target_json("cuda")["arch"] == (cuda_device_arch() or "sm_80")
    assert tgt.target_json("cuda:sm_90")["arch"] == "sm_90"
    assert tgt.target_json("cuda:90")["arch"] == "sm_90"
    assert tgt.target_json({"kind": "cuda", "arch": "sm_90"})["arch"] == "sm_90"
    raw = tgt.target_json({"kind": "llvm", "mcpu": "cortex-a72",
                           "mtriple": "aarch64-linux-gnu"})
    assert raw["mcpu"] == "cortex-a72"


def test_unknown_target_lists_the_valid_names():
    with pytest.raises(tvf.TargetError) as err:
        tgt.resolve_target("tpu")
    for name in ("x86", "arm", "aarch64", "cuda", "cuda:sm_XX"):
        assert name in str(err.value)
    with pytest.raises(tvf.TargetError, match="valid names"):
        tgt.resolve_target("cuda:volta")
    with pytest.raises(tvf.TargetError, match="target must be a name"):
        tgt.resolve_target(3)


def test_keys_name_architecture_cpu_or_gpu_and_tvm_version():
    keys = {name: tgt.target_key(name) for name in ("x86", "arm", "cuda", "cuda:sm_90")}
    for key in keys.values():
        assert key.endswith(f"-tvm{TVM_VERSION}")
        assert re.fullmatch(r"[A-Za-z0-9._+-]+", key)  # a directory name as it is
    if host_arch() == "x86_64":
        assert keys["x86"] == f"x86_64-{tgt.x86_class('x86')}-tvm{TVM_VERSION}"
        assert tgt.x86_class("x86") in ("avx512", "avx2", "avx", "sse")
    assert keys["arm"] == f"aarch64-neon-tvm{TVM_VERSION}"
    assert keys["cuda"] == f"cuda-{cuda_device_arch() or 'sm_80'}-tvm{TVM_VERSION}"
    assert keys["cuda:sm_90"] == f"cuda-sm_90-tvm{TVM_VERSION}"
    assert len(set(keys.values())) == len(keys) - (cuda_device_arch() == "sm_90")


def test_same_target_same_key_whatever_its_spelling():
    arm = tgt.target_key("arm")
    assert tgt.target_key("aarch64") == arm
    assert tgt.target_key({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}) == arm
    assert tgt.target_key(tgt.resolve_target("arm")) == arm
    assert tgt.target_key({"kind": "cuda", "arch": "sm_90"}) == tgt.target_key("cuda:sm_90")


def test_keys_separate_cpu_models_and_features():
    keys = {tgt.target_key(t) for t in (
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]},
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"},
        {"kind": "llvm", "mtriple": "x86_64-linux-gnu"},
        {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sandybridge"},
        {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"},
        {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"},
        {"kind": "cuda", "arch": "sm_80"}, {"kind": "cuda", "arch": "sm_90"})}
    assert len(keys) == 10
    assert tgt.target_key({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}) == \
        f"aarch64-generic-tvm{TVM_VERSION}"


X86_CLASSES = {  # LLVM CPU models (and features) -> the x86-64 feature class that keys them
    "avx512": [{"mcpu": "skylake-avx512"}, {"mcpu": "icelake-server"}, {"mcpu": "rocketlake"},
               {"mcpu": "sapphirerapids"}, {"mcpu": "znver4"}, {"mcpu": "x86-64-v4"},
               {"mtriple": "x86_64-linux-gnu", "mattr": ["+avx512f"]}],
    "avx2": [{"mcpu": "haswell"}, {"mcpu": "skylake"}, {"mcpu": "znver2"}, {"mcpu": "znver3"},
             {"mcpu": "x86-64-v3"}, {"mcpu": "znver4", "mattr": ["-avx512f"]},
             {"mtriple": "x86_64-linux-gnu", "mattr": ["+avx2", "+fma"]}],
    "avx": [{"mcpu": "sandybridge"}, {"mcpu": "ivybridge"}],
    "sse": [{"mtriple": "x86_64-linux-gnu"}, {"mcpu": "x86-64"}, {"mcpu": "nehalem"}],
}


@pytest.mark.parametrize("cls", sorted(X86_CLASSES))
def test_x86_keys_name_the_feature_class_not_the_model(cls):
    """x86-64 records are shared by CPUs of one feature class: an AVX-512 Xeon that LLVM calls
    rocketlake and one it calls icelake-server (or an AMD znver4) read the same folder."""
    for attrs in X86_CLASSES[cls]:
        key = tgt.target_key(dict({"kind": "llvm"}, **attrs))
        assert key == f"x86_64-{cls}-tvm{TVM_VERSION}", attrs
        # how a record stores its target: the full JSON, num-cores and all
        stored = tgt.target_json(dict({"kind": "llvm", "num-cores": 2}, **attrs))
        assert tgt.target_key(stored) == key


def _mlp():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def test_records_never_mix_two_targets_two_keys(tmp_path):
    """Modules record their target key; anything kept per key (tuning records) lands in one
    directory per target, so x86, ARM and x86 CPUs of another feature class never meet."""
    manifests = {}
    names = {"x86": "x86", "arm": "arm"}
    if host_arch() == "x86_64" and tgt.x86_class("x86") != "sse":
        names["baseline"] = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}  # SSE2 only
    for name, target in names.items():
        module = tvf.compile_inference(_mlp(), inputs=(BATCH, 1, 4, 4), target=target)
        manifests[name] = module.manifest
        store = tmp_path / "records" / module.manifest["target_key"]
        store.mkdir(parents=True)
        (store / "record.json").write_text(json.dumps(module.manifest["target"]))
    assert len({m["target_key"] for m in manifests.values()}) == len(manifests)
    assert manifests["arm"]["target_key"] == tgt.target_key("arm")
    assert manifests["arm"]["target_arch"] == "aarch64"
    assert manifests["x86"]["target_arch"] == host_arch()
    assert len(os.listdir(tmp_path / "records")) == len(manifests)
    for name, manifest in manifests.items():
        stored = json.loads((tmp_path / "records" / manifest["target_key"] / "record.json")
                            .read_text())
        assert stored == manifest["target"]
        assert tgt.target_key(stored) == manifest["target_key"]  # the key is recomputable


# ---- CUDA without a GPU -------------------------------------------------------------------

def _cnn():
    tvf.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3))


def _kernel_names(library_bytes):
    return set(re.findall(rb'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(',
                          library_bytes))


def _device_module_kinds(executable):
    kinds, todo = [], list(executable.mod.imports)
    while todo:
        m = todo.pop()
        kinds.append(m.kind)
        todo.extend(m.imports)
    return kinds


@pytest.fixture(scope="module")
def cuda_modules():
    train = tvf.compile_training(_cnn(), nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                 inputs=(BATCH, 1, 4, 4), labels=(BATCH,), target="cuda:sm_90")
    infer = tvf.compile_inference(_cnn(), inputs=(BATCH, 1, 4, 4), target="cuda")
    return train, infer


def test_float16_training_builds_for_cuda():
    """dlight's gpu.Reduction failed inside TVM on the float16 MSELoss kernel (float32 compute
    between casts) and took the whole build with it; a rule that fails now passes the kernel
    to the next one, and build_info names it."""
    model = nn.Sequential(nn.Linear(64, 32, dtype="float16"), nn.ReLU(),
                          nn.LayerNorm(32, dtype="float16"), nn.Linear(32, 10, dtype="float16"))
    train = tvf.compile_training(model, nn.MSELoss(), tvf.optim.Adam(1e-3),
                                 inputs=tvf.TensorSpec((8, 64), "float16"),
                                 labels=tvf.TensorSpec((8, 10), "float16"), target="cuda:sm_80")
    assert "cuda" in _device_module_kinds(train._executable)
    for kernel, causes in train.build_info["fallback_kernels"].items():
        assert all(c.startswith(("Matmul:", "GEMV:", "Reduction:", "GeneralReduction:"))
                   for c in causes), (kernel, causes)


class _RowMax(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 16)

    def forward(self, x):  # [B, T, 8] -> [B, 16]
        return tvf.ops.max(self.lin(x), axis=1)


def test_nan_propagating_max_reductions_build_for_cuda():
    """gpu.GeneralReduction bound the window of a float16 max_pool2d, and ops.max's gradient
    (float32 too), to threads, which TVM could not lower for tvmfront's NaN-propagating max
    ("No matched reducer"): the build failed after the rule had returned. Such a schedule
    is now checked, and the kernel goes to the next rule."""
    tvf.manual_seed(0)
    pool = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, dtype="float16"), nn.MaxPool2d(2))
    infer = tvf.compile_inference(pool, inputs=tvf.TensorSpec((4, 1, 8, 8), "float16"),
                                  target="cuda:sm_80")
    train = tvf.compile_training(_RowMax(), nn.MSELoss(), tvf.optim.SGD(0.1),
                                 inputs=(4, 6, 8), labels=(4, 16), target="cuda:sm_80")
    assert "max_pool2d" in infer.build_info["fallback_kernels"]
    assert "max_grad0" in train.build_info["fallback_kernels"]
    for module in (infer, train):
        assert "cuda" in _device_module_kinds(module._executable)


def test_float16_layer_norm_over_a_symbolic_batch_builds_for_cuda():
    """gpu.GeneralReduction kept every row's mean and variance of a float16 LayerNorm's
    weight gradient over [batch, F] in shared memory of `batch` floats, which CUDA codegen
    refuses ("Can only handle constant size stack allocation"), after the rule had returned:
    the build failed. Such a schedule is now checked, and the kernel goes to the next rule."""
    tvf.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(16, dtype="float16"), nn.Linear(16, 10, dtype="float16"))
    train = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(0.1),
                                 inputs=tvf.TensorSpec(("batch", 16), "float16"),
                                 labels=tvf.TensorSpec(("batch", 10), "float16"),
                                 target="cuda:sm_80")
    causes = train.build_info["fallback_kernels"]["layer_norm_grad1"]
    assert any(c.startswith("GeneralReduction:") and "symbolic size" in c for c in causes)
    assert "cuda" in _device_module_kinds(train._executable)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((BATCH, 1, 4, 4)).astype("float32"),
            rng.integers(0, 3, BATCH).astype("int64"))


@pytest.mark.slow
def test_cuda_modules_build_and_record_their_target(cuda_modules):
    train, infer = cuda_modules
    assert train.manifest["target_kind"] == "cuda"
    assert train.manifest["target"]["arch"] == "sm_90"
    assert train.manifest["target_key"] == f"cuda-sm_90-tvm{TVM_VERSION}"
    # "cuda" alone: this machine's GPU, else sm_80
    assert infer.manifest["target_key"] == \
        f"cuda-{cuda_device_arch() or 'sm_80'}-tvm{TVM_VERSION}"
    for module in cuda_modules:
        assert "cuda" in _device_module_kinds(module._executable)  # kernels in a CUDA module


@pytest.mark.slow
def test_cuda_bundles_hold_cuda_kernels(cuda_modules, tmp_path):
    kernels = {}
    for module, name in zip(cuda_modules, ("train", "infer")):
        path = module.export(str(tmp_path / name))
        data = open(os.path.join(path, "module.so"), "rb").read()
        assert data[:4] == b"\x7fELF"  # host code for this CPU, CUDA kernels embedded in it
        kernels[name] = _kernel_names(data)
        assert kernels[name], "no CUDA __global__ kernel in the exported library"
        assert any(b"conv" in k for k in kernels[name])
        manifest = json.load(open(os.path.join(path, "manifest.json")))
        assert manifest["target_kind"] == "cuda"
    # the backward pass and the optimizer update are GPU kernels too
    assert len(kernels["train"]) > len(kernels["infer"])
    assert any(b"grad" in k for k in kernels["train"])


@pytest.mark.slow
@pytest.mark.skipif(device_available("cuda"), reason="a CUDA GPU is present")
def test_cuda_module_without_gpu_is_a_clear_error(cuda_modules, tmp_path):
    train, infer = cuda_modules
    x, y = _batch()
    with pytest.raises(tvf.TargetError, match="compiled for cuda .* no usable cuda device"):
        train.step(x, y)
    with pytest.raises(tvf.TargetError, match="NVIDIA GPU"):
        infer(x)
    with pytest.raises(tvf.TargetError, match="cuda"):
        infer.predict(x)
    assert not train.runnable and "not runnable" in repr(train)
    assert set(train.state_dict()) == {"0.weight", "0.bias", "4.weight", "4.bias"}
    path = train.export(str(tmp_path / "bundle"))
    with pytest.raises(tvf.TargetError, match="cannot load this bundle here: .*cuda"):
        tvf.load(path)


@pytest.mark.slow
@pytest.mark.skipif(not device_available("cuda"), reason="needs a CUDA GPU")
def test_cuda_training_matches_cpu():
    """Runs where a GPU is present: the same steps on CUDA and on the CPU give the same losses."""
    losses = {}
    for name in ("x86", "cuda"):
        module = tvf.compile_training(_cnn(), nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                      inputs=(BATCH, 1, 4, 4), labels=(BATCH,), target=name)
        losses[name] = [module.step(*_batch(i)) for i in range(3)]
    np.testing.assert_allclose(losses["cuda"], losses["x86"], rtol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not device_available("cuda"), reason="needs a CUDA GPU")
def test_cuda_tuning_writes_records_under_the_cuda_key(tmp_path):
    """Runs where a GPU is present: MetaSchedule tunes a CUDA inference module (tiny budget)
    and its records land under this GPU's key, never another target's."""
    module = tvf.compile_inference(_cnn(), inputs=(BATCH, 1, 4, 4), target="cuda",
                                   records=False)
    key = module.manifest["target_key"]
    assert re.fullmatch(rf"cuda-sm_\d+-tvm{re.escape(TVM_VERSION)}", key)
    report = tvf.tune(module, budget=8, records=str(tmp_path), progress=False)
    assert report.trials > report.failed >= 0
    assert os.listdir(tmp_path) == [key]
    db = records.read(str(tmp_path / key))
    assert len(db) > 0
    assert {records.record_target_key(r[1][2]) for r in db.records} == {key}
    x, _ = _batch()
    reference = tvf.compile_inference(_cnn(), inputs=(BATCH, 1, 4, 4), target="x86")(x)
    np.testing.assert_allclose(module(x), reference, rtol=1e-4, atol=1e-5)
