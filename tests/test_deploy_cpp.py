"""examples/deploy_cpp: an exported inference bundle run by TVM's C++ runtime, no Python.

The runner is built with the system compiler (make, g++) against the TVM wheel's headers and
libraries, run on a bundle, and its outputs compared with the Python runtime's predict; then
the same sources cross-compiled for aarch64 run under qemu against an ARM bundle. A missing or
corrupt bundle file, a corrupt params.safetensors and a wrong input size each end in one line
on stderr and exit status 1, never a signal.
"""

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.runtime.cpu import CPU_FLAGS, host_features
from tvmfront.testing import qemu as cross

from _skip import skip_loudly

nn = tvf.nn
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = os.path.join(ROOT, "examples", "deploy_cpp")
SAMPLES = 7
# the site-packages holding the wheel's tvm/ and tvm_ffi/ (headers, host libraries)
TVM_SITE = os.path.dirname(os.path.dirname(importlib.util.find_spec("tvm_ffi").origin))


def _model():
    tvf.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    # running statistics other than (0, 1), so that the buffers the runner feeds matter
    state = model.state_dict()
    rng = np.random.default_rng(1)
    state["5.running_mean"] = rng.standard_normal(16).astype("float32")
    state["5.running_var"] = rng.uniform(0.5, 2.0, 16).astype("float32")
    model.load_state_dict(state)
    return model


def _input():
    return np.random.default_rng(0).standard_normal((SAMPLES, 1, 8, 8)).astype("float32")


def _build(request, out_dir, **variables):
    """make the runner into out_dir; skips (loudly) when make or the compiler is missing."""
    cxx = variables.get("CXX", "g++")
    for tool in ("make", cxx):
        if shutil.which(tool) is None:
            skip_loudly(request, f"skipping C++ deployment tests: {tool} is not installed "
                                 f"(Debian: apt-get install build-essential)")
    cmd = ["make", "-s", "-j2", "-C", SOURCES, f"BUILD={out_dir}", f"TVM_SITE={TVM_SITE}",
           *[f"{k}={v}" for k, v in variables.items()]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return os.path.join(out_dir, "tvmfront_run")


def _run(runner, bundle, x_file, out_file=None, prefix=(), extra=()):
    cmd = [*prefix, runner, str(bundle), str(x_file), *extra]
    if out_file is not None:
        cmd += ["--output", str(out_file)]
    env = dict(os.environ, TVM_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _check_outputs(proc, out_file, expected, rtol, atol):
    assert proc.returncode == 0, proc.stderr
    got = np.fromfile(out_file, dtype="float32").reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    # stdout: the shape, then per sample "index class: values" with the same class as Python
    lines = proc.stdout.splitlines()
    assert lines[0] == f"output shape {list(expected.shape)}"
    classes = [int(line.split(":")[0].split()[1]) for line in lines[1:]]
    assert classes == list(got.argmax(axis=1))
    printed = np.array([[float(v) for v in line.split(":")[1].split()] for line in lines[1:]])
    np.testing.assert_array_equal(printed.astype("float32"), got)  # %.9g round-trips float32


@pytest.fixture(scope="module")
def runner(request, tmp_path_factory):
    return _build(request, str(tmp_path_factory.mktemp("deploy_cpp_build")))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    module = tvf.compile_inference(_model(), inputs=("batch", 1, 8, 8))
    root = tmp_path_factory.mktemp("deploy_cpp")
    path = module.export(str(root / "bundle"))
    x = _input()
    x.tofile(root / "x.bin")
    return {"path": path, "root": root, "x": x, "x_file": root / "x.bin",
            "expected": tvf.load(path).predict(x)}


def test_cpp_runner_matches_python(runner, bundle, tmp_path):
    out = tmp_path / "out.bin"
    proc = _run(runner, bundle["path"], bundle["x_file"], out)
    _check_outputs(proc, out, bundle["expected"], rtol=1e-6, atol=1e-6)
    # one sample: the batch axis is sized by the input file
    bundle["x"][:1].tofile(tmp_path / "x1.bin")
    proc = _run(runner, bundle["path"], tmp_path / "x1.bin", out)
    _check_outputs(proc, out, bundle["expected"][:1], rtol=1e-6, atol=1e-6)


def test_cpp_runner_packs_dense_weights_once(runner, bundle, tmp_path):
    """A bundle of a static batch has transform_params and predict_packed (tvmfront.prepack):
    the runner packs the dense weights once at load and calls predict_packed, as the Python
    runtime does (the MLP 64-256-256-10 at batch 64 on 2 AVX-512 threads: 74.8 -> 59.8 us a
    run), with Python's outputs; --time says which function it ran. A bundle of any batch size
    has no such pair: predict."""
    module = tvf.compile_inference(_model(), inputs=(4, 1, 8, 8))
    path = module.export(str(tmp_path / "static"))
    out = tmp_path / "out.bin"
    proc = _run(runner, path, bundle["x_file"], out, extra=["--time", "3"])
    _check_outputs(proc, out, module.predict(bundle["x"]), rtol=1e-6, atol=1e-6)
    assert proc.stderr.startswith("tvmfront_run: predict_packed, 3 runs: median "), proc.stderr
    proc = _run(runner, bundle["path"], bundle["x_file"], extra=["--time", "2"])
    assert proc.returncode == 0 and proc.stderr.startswith("tvmfront_run: predict, 2 runs"), \
        proc.stderr
    _assert_fails(_run(runner, path, bundle["x_file"], extra=["--time", "0"]),
                  "--time takes a count of runs from 1 to 1000000, not 0")


@pytest.mark.slow
def test_cpp_runner_runs_a_training_bundle(runner, bundle, tmp_path):
    """A training bundle (what the digits examples export) holds the same forward: its
    optimizer state is checked by hash and left alone; batch 4, so 7 samples take two calls."""
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=(4, 1, 8, 8), labels=(4,))
    module.step(bundle["x"][:4], np.arange(4))  # parameters other than the initial ones
    path = module.export(str(tmp_path / "train"))
    out = tmp_path / "out.bin"
    _check_outputs(_run(runner, path, bundle["x_file"], out), out, module.predict(bundle["x"]),
                   rtol=1e-6, atol=1e-6)
    data = (tmp_path / "train" / "optimizer.safetensors").read_bytes()
    (tmp_path / "train" / "optimizer.safetensors").write_bytes(data[:-1])
    _assert_fails(_run(runner, path, bundle["x_file"]), "optimizer.safetensors is corrupt")


# ---- bad input: one line on stderr, exit status 1 --------------------------------------------
def _copy(bundle, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(bundle["path"], path)
    return path


def _rehash(path, name):
    """Record `name`'s current bytes in the manifest: a file written wrong at export, which
    its hash cannot catch; only the runner's own checks can."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


def _assert_fails(proc, *fragments):
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)  # not a signal
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvmfront_run: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert proc.stdout == ""


def _params_header(path):
    data = (path / "params.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    return data, n, json.loads(data[8:8 + n])


def _with_header(data, n, header):
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def test_missing_files(runner, bundle, tmp_path):
    x = bundle["x_file"]
    _assert_fails(_run(runner, tmp_path / "nowhere", x), "no such bundle directory")
    _assert_fails(_run(runner, bundle["path"], tmp_path / "nothing.bin"), "nothing.bin",
                  "cannot open the input file")
    for name, message in [("params.safetensors", "missing file params.safetensors"),
                          ("module.so", "missing file module.so"),
                          ("manifest.json", "missing manifest.json; not a tvmfront bundle")]:
        path = _copy(bundle, tmp_path / name)
        os.remove(path / name)
        _assert_fails(_run(runner, path, x), message)


def test_corrupt_files_caught_by_their_hash(runner, bundle, tmp_path):
    for name in ("params.safetensors", "module.so"):
        path = _copy(bundle, tmp_path / name)
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[:len(data) // 2])
        _assert_fails(_run(runner, path, bundle["x_file"]),
                      f"{name} is corrupt or was modified (sha256")
    path = _copy(bundle, tmp_path / "manifest")
    (path / "manifest.json").write_text('{"format": "tvmfront-bundle", "format_version"')
    _assert_fails(_run(runner, path, bundle["x_file"]), "unreadable manifest")


def test_corrupt_params_caught_by_the_parser(runner, bundle, tmp_path):
    """params.safetensors that matches its manifest hash but is not what the manifest
    describes: each strict check of the parser, never a read out of bounds."""
    data, n, header = _params_header(_copy(bundle, tmp_path / "read"))
    name = "4.weight"
    begin, end = header[name]["data_offsets"]
    other = dict(header)
    cases = {
        "truncated": (data[:len(data) - 10], "lie outside the file's"),
        "short": (data[:5], "too short for a safetensors file"),
        "header length": ((10**12).to_bytes(8, "little") + data[8:],
                          "header length 1000000000000 exceeds"),
        "bad json": (data[:8] + b"x" + data[9:], "the header is not valid JSON"),
        "offsets past end": (_with_header(data, n, {**other, name: {
            **header[name], "data_offsets": [begin, end + 10**9]}}), "lie outside the file's"),
        "wrong shape": (_with_header(data, n, {**other, name: {
            **header[name], "shape": [header[name]["shape"][1], header[name]["shape"][0]]}}),
            f"tensor '{name}' has shape [64, 16] float32, the manifest says [16, 64] float32"),
        "wrong dtype": (_with_header(data, n, {**other, name: {**header[name], "dtype": "I32"}}),
                        f"tensor '{name}' has shape [16, 64] int32, the manifest says"),
        "missing tensor": (_with_header(data[:8 + n + begin] + data[8 + n + end:], n, {
            k: ({**v, "data_offsets": [o - (end - begin) if o >= end else o
                                       for o in v["data_offsets"]]} if k != "__metadata__" else v)
            for k, v in header.items() if k != name}), f"lacks tensor '{name}'"),
        "overlap": (_with_header(data, n, {**other, "4.bias": {
            **header["4.bias"], "data_offsets": [begin, begin + 64]}}), "overlapping or gapped"),
    }
    for label, (content, message) in cases.items():
        path = _copy(bundle, tmp_path / label.replace(" ", "_"))
        (path / "params.safetensors").write_bytes(content)
        _rehash(path, "params.safetensors")
        _assert_fails(_run(runner, path, bundle["x_file"]), "params.safetensors", message)


def test_corrupt_library_is_a_message(runner, bundle, tmp_path):
    """A module.so cut short would pass dlopen's checks and die of SIGBUS on its first page
    past the end of the file: the runner checks the ELF structure first."""
    with open(os.path.join(bundle["path"], "module.so"), "rb") as f:
        data = f.read()
    no_sections = data[:60] + b"\0\0" + data[62:]  # e_shnum = 0: the segments are checked
    for label, content, message in [
            ("cut", data[:len(data) // 3], "its section headers lie outside the file"),
            ("segments", no_sections[:len(data) // 3], "module.so: segment"),
            ("tiny", data[:40], "too short for a shared library"),
            ("not elf", b"hello" * 100, "module.so is not an ELF file")]:
        path = _copy(bundle, tmp_path / label.replace(" ", "_"))
        (path / "module.so").write_bytes(content)
        _rehash(path, "module.so")
        _assert_fails(_run(runner, path, bundle["x_file"]), message)


def test_wrong_input_size(runner, bundle, tmp_path):
    x = tmp_path / "x.bin"
    sample = 64 * 4
    for size in (0, sample - 4, 3 * sample + 1):
        x.write_bytes(b"\0" * size)
        _assert_fails(_run(runner, bundle["path"], x), f"x.bin is {size} bytes",
                      "takes a positive multiple of 256 bytes (one sample)")
    # a bundle compiled for batch B runs B samples at a time, the last batch zero-padded, as
    # predict does (this copy's manifest says 4; the library itself takes any batch, so the
    # batching is the runner's own)
    path, out = _copy(bundle, tmp_path / "fixed"), tmp_path / "out.bin"
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["inputs"]["shape"][0] = manifest["outputs"]["shape"][0] = 4
    (path / "manifest.json").write_text(json.dumps(manifest))
    _check_outputs(_run(runner, path, bundle["x_file"], out), out, bundle["expected"],
                   rtol=1e-6, atol=1e-6)  # 7 samples: a batch of 4, then 3 and a padded one
    # an output whose axis 0 is not the batch cannot be joined: exactly one batch
    manifest["outputs"]["shape"][0] = "batch * 2"
    (path / "manifest.json").write_text(json.dumps(manifest))
    x.write_bytes(b"\0" * 3 * sample)
    _assert_fails(_run(runner, path, x), "input [4, 1, 8, 8] float32 takes exactly 1024 bytes",
                  "batches cannot be joined")


def test_foreign_bundle_is_refused(runner, bundle, tmp_path):
    path = _copy(bundle, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    for key, value, message in [("target_arch", "aarch64", "compiled for aarch64, this runner is "
                                                           "built for x86_64"),
                                ("kind", "training", "a training bundle lists exactly module.so, "
                                                     "params.safetensors and optimizer"),
                                ("kind", "eval", "unknown module kind 'eval'"),
                                ("format_version", 2, "bundle format version 2"),
                                ("tvm_version", "0.26.0", "built with TVM 0.26.0")]:
        (path / "manifest.json").write_text(json.dumps({**manifest, key: value}))
        _assert_fails(_run(runner, path, bundle["x_file"]), message)


def test_code_for_missing_cpu_features_is_refused(request, runner, bundle, tmp_path):
    """Code for a feature this CPU lacks would die of SIGILL at its first call. The runner
    knows every feature a manifest may list (an alderlake bundle's avxvnni had passed its
    21-name table and died), and a name it does not know is refused too."""
    absent = [f for f in CPU_FLAGS["x86_64"] if f not in host_features()]
    if not absent:
        skip_loudly(request, "this CPU has every feature a manifest may list: none to refuse")
    path = _copy(bundle, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    for extra in (absent[-1], "avx10.9"):
        manifest["cpu_features"] = sorted(manifest["cpu_features"] + [extra])
        (path / "manifest.json").write_text(json.dumps(manifest))
        _assert_fails(_run(runner, path, bundle["x_file"]),
                      f"needs CPU features {extra}, which this CPU lacks")
        manifest["cpu_features"].remove(extra)


def test_the_runners_cpu_feature_table_is_pythons():
    """cpu.cc's rows, per architecture, are tvmfront/runtime/cpu.py's CPU_FLAGS."""
    text = open(os.path.join(SOURCES, "cpu.cc")).read()
    for arch, guard in (("x86_64", "__x86_64__"), ("aarch64", "__aarch64__")):
        block = text[text.index(f"defined({guard})"):]
        block = block[:block.index("};")]
        assert dict(re.findall(r'\{"([^"]+)", "([^"]+)"\}', block)) == CPU_FLAGS[arch], arch


def _edited(bundle, tmp_path, **changes):
    """A copy of the bundle whose manifest has `changes` (the manifest is not hashed)."""
    path = _copy(bundle, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_a_size_0_input_axis_is_refused_not_a_crash(runner, bundle, tmp_path):
    """A batch of 0 looped forever; a 0 elsewhere divided by zero (SIGFPE). Python refuses
    the same manifests (compile never writes one)."""
    for shape in ([0, 1, 8, 8], ["batch", 1, 0, 8]):
        path = _edited(bundle, tmp_path / str(shape[0]),
                       inputs={"shape": shape, "dtype": "float32"})
        _assert_fails(_run(runner, path, bundle["x_file"]), "manifest 'inputs' has a "
                      "dimension of 0; an input has at least one element along each axis")
        with pytest.raises(tvf.BundleError, match="manifest 'inputs' must be .* >= 1"):
            tvf.load(path)


def test_predict_one_batch_is_honoured(runner, bundle, tmp_path):
    """compile's finding that samples may not be split (an output [4, B], batch statistics)
    keeps the runner from splitting or padding them, as it keeps predict."""
    manifest = json.loads(open(os.path.join(bundle["path"], "manifest.json")).read())
    fixed = {"shape": [4, 1, 8, 8], "dtype": "float32"}
    path = _edited(bundle, tmp_path, inputs=fixed,
                   outputs={**manifest["outputs"], "shape": [4, 10]},
                   predict_one_batch="a BatchNorm normalises with the batch's statistics")
    _assert_fails(_run(runner, path, bundle["x_file"]), "exactly 1024 bytes",
                  "batches cannot be joined: a BatchNorm normalises with the batch's statistics")


def _same_as_python(runner, path, x, tmp_path):
    """The runner's float32 output for the samples `x` is tvf.load(path).predict(x)'s."""
    x.tofile(tmp_path / "x.bin")
    out = tmp_path / "out.bin"
    proc = _run(runner, path, tmp_path / "x.bin", out)
    assert proc.returncode == 0, proc.stderr
    want = tvf.load(path).predict(x)
    np.testing.assert_allclose(np.fromfile(out, "float32").reshape(want.shape), want,
                               rtol=1e-6, atol=1e-6)


class _Center(nn.Module):
    """x minus the batch's mean: every output depends on the whole batch."""

    def forward(self, x):
        return x - tvf.ops.mean(x, axis=0, keepdims=True)


def test_the_last_batch_is_padded_as_python_pads_it(runner, tmp_path):
    """With copies of the last sample, as predict (zeros had given other numbers wherever the
    padding reaches the samples: 0.548 for Python's 0.233 here)."""
    module = tvf.compile_inference(_Center(), inputs=(8, 8))
    path = module.export(str(tmp_path / "center"))
    x = np.random.default_rng(0).standard_normal((5, 8)).astype("float32") + 1
    _same_as_python(runner, path, x, tmp_path)


def test_token_ids_out_of_range_are_refused(runner, tmp_path):
    """A bundle's id_ranges (Embedding's table) hold in C++ as in Python: out-of-range ids
    had been clamped into the table, a silent answer."""
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(12, 3))
    module = tvf.compile_inference(model, inputs=tvf.TensorSpec(("batch", 3), "int64"))
    path = module.export(str(tmp_path / "ids"))
    assert json.loads((tmp_path / "ids" / "manifest.json").read_text())["id_ranges"] == {
        "predict": {"x": 20}}
    ids = np.array([[0, 5, 19], [3, 4, 5]], "int64")
    _same_as_python(runner, path, ids, tmp_path)
    for bad, at in ((20, 4), (-1, 4), (10**9, 4)):
        wrong = ids.copy()
        wrong[1, 1] = bad
        wrong.tofile(tmp_path / "bad.bin")
        _assert_fails(_run(runner, path, tmp_path / "bad.bin"), f"holds {bad} at value {at}, "
                      f"out of range: it indexes a table of 20 rows, so it must lie in 0..19")


def test_argument_mistakes_are_named(runner, bundle, tmp_path):
    _assert_fails(_run(runner, bundle["path"], tmp_path), "is a directory, not an input file")
    _assert_fails(_run(runner, bundle["path"], bundle["x_file"], extra=("--output",)),
                  "--output needs a file name")


# ---- aarch64: cross-compiled, run under qemu ---------------------------------------------
@pytest.mark.slow
def test_cpp_runner_on_aarch64_under_qemu(request, bundle, tmp_path):
    try:
        env = cross.setup_arm()  # qemu, the cross compiler and the aarch64 wheels; idempotent
    except cross.ArmUnavailable as err:
        skip_loudly(request, f"skipping the aarch64 C++ runner: {err}")
    cxx = env.get("ARM_CXX") or "aarch64-linux-gnu-g++"
    runner = _build(request, str(tmp_path / "build"), CXX=cxx, TVM_LIB_SITE=env["ARM_SITE"])
    with open(runner, "rb") as f:
        assert f.read(20)[18] == 183, "the runner is not an aarch64 executable"  # EM_AARCH64
    module = tvf.compile_inference(_model(), inputs=("batch", 1, 8, 8), target="arm")
    path = module.export(str(tmp_path / "arm_bundle"))
    out = tmp_path / "out.bin"
    proc = _run(runner, path, bundle["x_file"], out, prefix=(env["QEMU"], "-L", env["ARM_SYSROOT"]))
    # another CPU's code: the same model, float32 rounding may differ in the last bits
    _check_outputs(proc, out, bundle["expected"], rtol=1e-4, atol=1e-5)
    # and the x86 bundle is refused there with a message
    _assert_fails(_run(runner, bundle["path"], bundle["x_file"],
                       prefix=(env["QEMU"], "-L", env["ARM_SYSROOT"])),
                  "compiled for x86_64, this runner is built for aarch64")
