"""`import tvmfront` loads no TVM (2-5 s on a 2-core machine): TVM is imported when a compile,
a load or a TVM name first needs it, and what was registered before (NaN checks, errors) is
registered then."""

import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("tvm", "tvm_ffi", "tvm.relax", "tvm.s_tir", "tvm.te", "ml_dtypes")


def _run(code):
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_import_and_model_definition_load_no_tvm():
    loaded = _run(
        "import sys\n"
        "import tvmfront as tvf\n"
        "import tvmfront.cli  # `tvmfront launch` starts mpiexec without loading TVM\n"
        "model = tvf.nn.Sequential(tvf.nn.Flatten(), tvf.nn.Linear(64, 8), tvf.nn.ReLU())\n"
        "spec = tvf.Spec(('batch', 64), 'float32')\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])")
    assert loaded == "[]", f"importing tvmfront loaded {loaded}"


def test_compile_after_lazy_import_registers_checks():
    # debug_nans's check function and error class were registered before TVM was loaded:
    # the compiled module must still call the check and raise NonFiniteOpError through the VM
    out = _run(
        "import numpy as np, sys\n"
        "import tvmfront as tvf\n"
        "assert 'tvm' not in sys.modules\n"
        "m = tvf.compile_inference(tvf.nn.Sequential(tvf.nn.Linear(4, 2)), inputs=(1, 4),\n"
        "                          records=False, debug_nans=True)\n"
        "x = np.full((1, 4), np.inf, 'float32')\n"
        "try:\n"
        "    m(x)\n"
        "except tvf.NonFiniteOpError as err:\n"
        "    print('raised', type(err).__name__)\n")
    assert out == "raised NonFiniteOpError"


def test_lazy_names_behave_as_tvm_names():
    from tvmfront import _tvm

    target = _tvm.Target("llvm")
    assert isinstance(target, _tvm.Target) and not isinstance(object(), _tvm.Target)
    assert _tvm.te.placeholder((2,), name="a").shape[0] == 2
    assert _tvm.TVM_VERSION == _tvm.tvm.__version__
    assert np.asarray(_tvm.to_numpy(_tvm.to_device(np.ones(3, "float32")))).sum() == 3


def test_tune_stays_the_function_after_the_cli_is_imported():
    """The command line imports tuning; tvf.tune must still be the function (a submodule of
    the same name would have replaced it as the package's attribute)."""
    import inspect

    import tvmfront as tvf
    from tvmfront import cli  # noqa: F401

    assert inspect.isfunction(tvf.tune) and "budget" in inspect.signature(tvf.tune).parameters
    assert tvf.TuneReport.__name__ == "TuneReport"
