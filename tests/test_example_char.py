"""examples/char_transformer.py end to end in its quick mode (20 steps, a short validation and
sample): it names its text by SHA-256 and size, trains below the uniform guess, exports a
bundle whose inference module examples/char_generate.py samples from in a fresh process with
the key/value cache."""

import math
import os
import re
import subprocess
import sys

import pytest

import tvmfront as tvf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


@pytest.mark.slow
def test_char_transformer_quick_run_exports_a_bundle_that_samples(tmp_path):
    text, sha, nbytes = tvf.data.load_pydoc_text()
    vocab = tvf.data.char_vocab(text)
    out = _run("char_transformer.py", "--quick", "--out", str(tmp_path))
    assert f"{nbytes} bytes" in out and f"sha256={sha}" in out
    assert re.search(r"step 20/20 loss=[0-9.]+ .* tokens_per_s=\d+", out)
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"val_bpc=([0-9.]+)", last)
    assert match, f"last line is not val_bpc=<float>: {last!r}"
    # uniform over the characters is log2(len(vocab)) = 6.7 bits; 20 steps reach about the
    # unigram baseline (4.6)
    assert float(match.group(1)) < math.log2(len(vocab)) - 1.0
    assert sorted(os.listdir(tmp_path)) == ["infer", "train", "vocab.json"]
    assert sorted(tvf.load(str(tmp_path / "infer")).manifest["methods"]) == ["decode", "prefill"]

    # a fresh process: more characters than the context (the window slides), seeded
    args = ("char_generate.py", str(tmp_path), "--prompt", "def ", "--chars", "100",
            "--top-k", "5", "--seed", "3")
    sampled = _run(*args)
    lines = sampled.rstrip("\n").split("\n")
    assert re.fullmatch(r"ms_per_token=[0-9.]+", lines[-1])
    generated = "\n".join(lines[:-1])
    assert generated.startswith("def ") and len(generated) == 4 + 100
    assert set(generated) <= set(vocab)
    assert _run(*args).rstrip("\n").split("\n")[:-1] == lines[:-1]  # same seed, same text
