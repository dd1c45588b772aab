"""`tvmfront records check [--prune]` (tvmfront.tuning.verify): a module rebuilt with and
without a store's records, timed interleaved; with --prune the records that do not make their
module faster are dropped from the store and builds no longer apply them. On a tiny MLP tuned
with a budget of 2 trials; "faster" is forced either way with --min-speedup (0: every module
is faster, 1e9: none is), since which way a real measurement goes is not for a test to know."""

import os
import shutil
import textwrap

import numpy as np
import pytest

import tvmfront as tvf
from _tuning import _private_cache, mlp, store_without_verdicts  # noqa: F401  (autouse)
from tvmfront import cli, records
from tvmfront.tuning import verify

KEY = records.store_key("x86")
X = np.random.default_rng(0).standard_normal((4, 16)).astype("float32")
MODEL_FILE = textwrap.dedent("""
    import tvmfront as tvf

    def tvmfront_modules():
        tvf.manual_seed(0)
        model = tvf.nn.Sequential(tvf.nn.Linear(16, 32), tvf.nn.ReLU(), tvf.nn.Linear(32, 4))
        return {"infer": tvf.compile_inference(model, (4, 16), records=False)}
""")

@pytest.fixture(scope="module")
def tuned_root(tmp_path_factory):
    """A records root holding the tiny MLP's records (budget 2), all applying (no verdicts)."""
    root = tmp_path_factory.mktemp("tuned")
    module = tvf.compile_inference(mlp(), (4, 16), records=False)
    report = tvf.tune(module, budget=2, records=root, progress=False)
    assert report.trials > 0
    return store_without_verdicts(root, tmp_path_factory.mktemp("fixture") / "schedules")


def _copy(root, dest):
    shutil.copytree(root, dest)
    return str(dest)


def _applied(root):
    module = tvf.compile_inference(mlp(), (4, 16), records=root)
    return module, module.build_info["tuned_kernels"]


@pytest.mark.slow  # the fixture tunes one batch (~10-30 s on 2 shared cores)
def test_a_module_that_is_faster_keeps_its_records(tuned_root, tmp_path):
    root = _copy(tuned_root, tmp_path / "root")
    folder = verify.store_folder(root, "x86")
    before = len(records.read(folder))
    module, applied = _applied(root)
    assert before > 0 and applied > 0
    check = verify.check_module("mlp", module, folder, rounds=2, min_speedup=0.0,
                                min_seconds=0.05, log=lambda line: None)
    assert check.keep and check.hashes and check.default_s > 0 and check.tuned_s > 0
    assert len(check.ratios) == 2
    # kept end to end: only records slower than their default when timed alone go (two
    # trials can find a worse schedule than the default rule)
    slower = {h for h, (_, _, _, verdict) in check.kernels.items() if verdict == "slower"}
    assert verify.prune(folder, [check]) == slower
    assert len(records.read(folder)) == before - len(slower)
    kept = records.read(folder).meta["kernels"]
    assert all(v["verdict"] == "faster" for v in kept.values())  # today's verdicts, kept
    assert _applied(root)[1] == applied - len(slower)


@pytest.mark.slow
def test_cli_check_reports_and_prune_drops_what_is_not_faster(tuned_root, tmp_path, capsys):
    root = _copy(tuned_root, tmp_path / "root")
    folder = os.path.join(root, KEY)
    source = tmp_path / "model.py"
    source.write_text(MODEL_FILE)
    reference, applied = _applied(root)
    files = {f: open(os.path.join(folder, f)).read() for f in os.listdir(folder)}
    common = [str(source), "--records", root, "--rounds", "1", "--min-speedup", "1e9"]

    # without --prune: a report, the store untouched
    assert cli.main(["records", "check", *common]) == 0
    out = capsys.readouterr().out
    assert "model:infer" in out and "NOT faster" in out and "would be dropped" in out
    assert {f: open(os.path.join(folder, f)).read() for f in os.listdir(folder)} == files
    # --only takes the printed label too; a name that matches no module is an error, not a
    # check of nothing that reads as a clean store
    assert cli.main(["records", "check", *common, "--only", "model:infer"]) == 0
    assert "model:infer" in capsys.readouterr().out
    assert cli.main(["records", "check", *common, "--only", "nosuch"]) != 0
    assert "no module ['nosuch']; there are ['model:infer'" in capsys.readouterr().err

    # --prune: the module's records are gone; builds apply none and compute the same
    assert cli.main(["records", "check", *common, "--prune"]) == 0
    out = capsys.readouterr().out
    assert "pruned " in out and "model:infer" in out and " drop" in out, out
    assert len(records.read(folder)) < len(records.read(os.path.join(tuned_root, KEY)))
    judged = records.read(folder).meta["modules"]["model:infer"]  # kept beside the records
    assert judged["kept"] is False and judged["tuned_kernels"] > 0 and judged["speedup"] > 0
    module, now = _applied(root)
    assert now == 0
    np.testing.assert_allclose(module(X), reference(X), rtol=1e-5, atol=1e-6)


def test_check_without_records_for_this_machine_says_so(tmp_path, capsys):
    source = tmp_path / "model.py"
    source.write_text(MODEL_FILE)
    assert cli.main(["records", "check", str(source), "--records", str(tmp_path)]) == 0
    assert f"no records for {KEY}" in capsys.readouterr().out
