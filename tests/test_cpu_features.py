"""Code built for CPU features this CPU lacks is refused with a TargetError, never a SIGILL;
portable x86 feature classes build bundles that run on every CPU of the class."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import target as tgt
from tvmfront._tvm import TVM_VERSION, host_arch
from tvmfront.runtime import cpu

nn = tvf.nn
BATCH = 2
SAPPHIRE = {"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2}

pytestmark = pytest.mark.skipif(host_arch() != "x86_64", reason="x86-64 CPU features")


def _mlp():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def _x():
    return np.random.default_rng(0).standard_normal((BATCH, 1, 4, 4)).astype("float32")


def _host_avx512():
    with open("/proc/cpuinfo") as f:
        return " avx512f" in f.read()


@pytest.fixture
def avx2_host(monkeypatch):
    """This CPU as an AVX2 machine: its real features less AVX-512 and AMX (the same set on
    an AVX2 machine), so the tests mean the same on AVX-512 servers."""
    real = cpu.host_features()
    monkeypatch.setattr(cpu, "host_features", lambda: frozenset(
        f for f in real if not f.startswith(("avx512", "amx", "avxvnni", "gfni"))))


def test_host_features_come_from_the_kernel():
    have = cpu.host_features()
    assert {"sse2", "sse"} <= have
    assert ("avx512f" in have) == _host_avx512()
    with open("/proc/cpuinfo") as f:
        assert ("avx2" in have) == (" avx2" in f.read())


def test_required_features_follow_mcpu_and_mattr():
    assert {"avx512f", "avx512bw", "avx2", "fma"} <= set(cpu.required_features(SAPPHIRE))
    v3 = set(cpu.required_features(tgt.target_json("x86:avx2")))
    assert {"avx2", "fma", "avx", "sse4.2"} <= v3 and not any("avx512" in f for f in v3)
    assert cpu.required_features(tgt.target_json("x86:sse")) == ("sse", "sse2")
    no512 = cpu.required_features({"kind": "llvm", "mcpu": "znver4", "mattr": ["-avx512f"]})
    assert "avx512f" not in no512 and "avx2" in no512
    # tuning-only pseudo-features and system instructions are not counted
    assert not any(f.startswith(("fast-", "slow-", "false-deps")) for f in cpu.required_features(
        SAPPHIRE))


@pytest.mark.slow
def test_foreign_features_are_a_target_error_at_first_call_and_load(avx2_host, tmp_path):
    module = tvf.compile_inference(_mlp(), inputs=(BATCH, 1, 4, 4), target=SAPPHIRE)
    assert not module.runnable
    with pytest.raises(tvf.TargetError, match=r"needs CPU features .*avx512f.*x86:avx2"):
        module(_x())
    path = module.export(str(tmp_path / "spr"))  # exporting needs no running
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    assert {"avx512f", "avx512bw", "avx2"} <= set(manifest["cpu_features"])
    with pytest.raises(tvf.TargetError, match=r"cannot load this bundle here: .*avx512f"):
        tvf.load(path)
    train = tvf.compile_training(_mlp(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                 inputs=(BATCH, 1, 4, 4), labels=(BATCH,), target=SAPPHIRE)
    with pytest.raises(tvf.TargetError, match="avx512f"):
        train.step(_x(), np.zeros(BATCH, "int64"))


def test_a_forged_feature_list_is_honoured(tmp_path):
    """The manifest's list counts even where the target implies less (the target may have
    been edited, or the library built otherwise): a feature no CPU has refuses the load."""
    path = tvf.compile_inference(_mlp(), inputs=(BATCH, 1, 4, 4), target="x86:sse").export(
        str(tmp_path / "b"))
    mpath = os.path.join(path, "manifest.json")
    manifest = json.load(open(mpath))
    manifest["cpu_features"].append("avx10.9")
    json.dump(manifest, open(mpath, "w"))
    with pytest.raises(tvf.TargetError, match=r"needs CPU features avx10\.9"):
        tvf.load(path)


def test_avx2_class_bundle_records_its_features_and_runs_here(tmp_path):
    native = tvf.compile_inference(_mlp(), inputs=(BATCH, 1, 4, 4), target="x86")
    module = tvf.compile_inference(_mlp(), inputs=(BATCH, 1, 4, 4), target="x86:avx2")
    assert module.manifest["target_key"] == f"x86_64-avx2-tvm{TVM_VERSION}"
    path = module.export(str(tmp_path / "avx2"))
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    assert {"avx", "avx2", "fma"} <= set(manifest["cpu_features"])
    assert not any(f.startswith("avx512") for f in manifest["cpu_features"])
    np.testing.assert_allclose(tvf.load(path)(_x()), native(_x()), rtol=1e-5, atol=1e-6)


_CHILD = r"""
import sys, numpy as np, tvmfront as tvf
try:
    m = tvf.load(sys.argv[1])
    m(np.zeros((2, 1, 4, 4), "float32"))
    print("ran")
except tvf.TargetError as err:
    print("refused:", err)
"""


@pytest.mark.slow
def test_an_avx512_bundle_never_kills_the_process(tmp_path):
    """The reported crash, end to end in a fresh process: on an AVX2 machine the load is
    refused (it used to die of SIGILL, exit 132); on a CPU with all its features it runs."""
    path = tvf.compile_inference(_mlp(), inputs=(BATCH, 1, 4, 4), target=SAPPHIRE).export(
        str(tmp_path / "spr"))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(tvf.__file__)))
    out = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    if not cpu.missing_features(cpu.required_features(SAPPHIRE)):  # a Sapphire Rapids here
        assert out.stdout.startswith("ran")
    else:
        assert out.stdout.startswith("refused:") and "CPU features" in out.stdout


def test_tuning_refuses_a_module_this_cpu_cannot_run(avx2_host):
    # Timing its candidates here would run AVX-512 code on an AVX2 CPU: SIGILL.
    model = tvf.nn.Sequential(tvf.nn.Linear(16, 4))
    module = tvf.compile_inference(model, inputs=(BATCH, 16), target="x86:avx512", records=False)
    with pytest.raises(tvf.TvmfrontError, match="avx512f"):
        tvf.tune(module, budget=2, records=False)
