"""The shipped examples run end to end and reach their accuracy targets (with the reloaded
bundle, as their last line reports)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
    env = dict(os.environ, TVMFRONT_PROGRESS="1")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                         capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout, out.stderr


def _accuracy(stdout):
    last = stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"test_accuracy=([0-9.]+)", last)
    assert match, f"last line is not test_accuracy=<float>: {last!r}"
    return float(match.group(1))


@pytest.mark.slow
@pytest.mark.parametrize("script,target", [("mlp_digits.py", 0.97), ("lenet_digits.py", 0.98)])
def test_digits_example(script, target, tmp_path):
    stdout, progress = _run(script, "--out", str(tmp_path / "bundle"))
    # per-epoch progress (loss, learning rate, speed) and validation metrics
    assert re.search(r"epoch 1/\d+ loss=[0-9.]+ lr=[0-9.e+-]+ samples_per_s=\d+ "
                     r"val_loss=[0-9.]+ val_accuracy=[0-9.]+", progress)
    assert sorted(os.listdir(tmp_path / "bundle")) == [
        "manifest.json", "module.so", "optimizer.safetensors", "params.safetensors"]
    assert _accuracy(stdout) >= target


@pytest.mark.slow
def test_custom_op_example():
    stdout, _ = _run("custom_op.py")
    assert "gradcheck passed" in stdout
    assert _accuracy(stdout) > 0.9


@pytest.mark.slow
def test_compress_example(tmp_path):
    """It had crashed at its first pruning stage: it reset the one-shot masks with
    update_masks(module, 0.0), which masks-only-grow refuses."""
    stdout, _ = _run("compress_digits.py", "--epochs", "3", "--out", str(tmp_path))
    for tag, fraction in (("50", "0.500"), ("80", "0.800"), ("90", "0.900")):
        assert re.search(rf"^accuracy pruned{tag}_one_shot=[0-9.]+$", stdout, re.M), stdout
        assert re.search(rf"^accuracy pruned{tag}=[0-9.]+ \(exported, reloaded; {fraction} of "
                         r"the weights are exact zeros\)$", stdout, re.M), stdout
        assert os.path.isfile(tmp_path / f"pruned{tag}" / "manifest.json")
    accuracy = dict(re.findall(r"^accuracy (float|qat_int8)=([0-9.]+)$", stdout, re.M))
    assert float(accuracy["float"]) > 0.5 and float(accuracy["qat_int8"]) > 0.5
