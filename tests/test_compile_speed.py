"""What makes a cold compile faster must not change what it builds: the kernels built in a
thread per core (tvmfront.split_build) and kernels without TVM's argument asserts give the
same results as one piece built as TVM does by default."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import build as build_mod
from tvmfront import split_build

nn = tvf.nn


def _model():
    tvf.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10))


def _step(tmp_path, name, monkeypatch, **settings):
    monkeypatch.setenv("TVMFRONT_CACHE_DIR", str(tmp_path / name))
    for attr, value in settings.items():
        monkeypatch.setattr(build_mod, attr, value)
    module = tvf.compile_training(_model(), tvf.nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                  inputs=(8, 1, 8, 8), labels=(8,), records=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 8, 8)).astype("float32")
    y = rng.integers(0, 10, 8)
    losses = [float(module.step(x, y)) for _ in range(3)]
    return module, losses, module.predict(x)


def test_split_build_matches_one_piece_build(tmp_path, monkeypatch, caplog):
    calls = []
    split = split_build.split
    monkeypatch.setattr(split_build, "split", lambda mod: calls.append(1) or split(mod))
    one, one_losses, one_out = _step(tmp_path, "one", monkeypatch, SPLIT_BUILD=False,
                                     KERNEL_ASSERTS=True)
    assert not calls
    two, two_losses, two_out = _step(tmp_path, "two", monkeypatch, SPLIT_BUILD=True,
                                     KERNEL_ASSERTS=False)
    assert calls  # the split path ran ...
    assert two.build_info["cache"] == "miss" and "one piece" not in caplog.text
    np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)  # ... and computes the same
    np.testing.assert_allclose(two_out, one_out, rtol=1e-5, atol=1e-6)
    # The library in the cache is complete: a second compile loads it and runs it.
    again, again_losses, _ = _step(tmp_path, "two", monkeypatch, SPLIT_BUILD=True)
    assert again.build_info["cache"] == "hit"
    np.testing.assert_allclose(again_losses, one_losses, rtol=1e-5)


def test_split_moves_the_static_kernels_out_and_calls_them_by_name():
    from tvmfront import compile as compile_mod  # noqa: F401 - loads TVM
    from tvmfront import graph, pipeline
    from tvmfront._tvm import prim_func_type

    mod, _ = graph.build_forward(_model(), (2, 1, 8, 8), None)
    lowered = pipeline.run(mod, pipeline.LOWERING)
    main, side = split_build.split(lowered)
    kernels = {gv.name_hint for gv, f in lowered.functions.items()
               if isinstance(f, prim_func_type())}
    moved = [gv.name_hint for chunk in side for gv in chunk.get_global_vars()]
    kept = {gv.name_hint for gv, f in main.functions.items() if isinstance(f, prim_func_type())}
    assert len(kept) == 1 and set(moved) | kept == kernels and not set(moved) & kept
    assert len(moved) == len(set(moved)) and max(len(c.functions) for c in side) <= \
        split_build.CHUNK
    script = main.script()
    for chunk in side:  # called by name, exported under that name
        for gvar, func in chunk.functions.items():
            assert f'"{gvar.name_hint}"' in script
            assert func.attrs["global_symbol"] == gvar.name_hint


class _Reshaped(nn.Module):
    """A conv whose output is reshaped: the step has a kernel of its own named `reshape`,
    and the build legalizes Relax reshapes left in its functions into kernels named so."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return tvf.ops.reshape(y, shape=(y.shape[0], 4 * 6 * 6))


def test_a_side_kernel_named_as_a_legalized_op_stays_in_main(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TVMFRONT_CACHE_DIR", str(tmp_path))
    tvf.manual_seed(0)
    module = tvf.compile_training(_Reshaped(), nn.MSELoss(), tvf.optim.SGD(lr=0.1),
                                  inputs=(2, 2, 6, 6), labels=(2, 144), records=False)
    # before: "multiple definition of `__tvm_ffi_reshape'" at the link, built in one piece
    assert "one piece" not in caplog.text and "multiple definition" not in caplog.text
    names = {gv.name_hint for gv in module._lowered.get_global_vars()}
    assert "reshape" in names
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 6, 6)).astype("float32")
    y = rng.standard_normal((2, 144)).astype("float32")
    losses = [float(module.step(x, y)) for _ in range(3)]
    assert losses[2] < losses[0]


def test_kernels_lose_their_argument_asserts_only_in_module_builds():
    from tvmfront._tvm import tvm

    with tvm.transform.PassContext(opt_level=3, config={"tirx.enable_debug": False}):
        ctx = build_mod.kernel_pass_context()
        assert ctx.opt_level == 3 and not ctx.config["tirx.enable_debug"]  # kept
        assert ctx.config["tirx.disable_assert"]
    assert not tvm.transform.PassContext.current().config.get("tirx.disable_assert", False)


def test_the_vm_still_rejects_a_wrongly_shaped_argument(tmp_path, monkeypatch):
    """What the kernels' asserts checked is checked at the VM function's entry (called here
    directly, past the module's own Python checks)."""
    from tvmfront._tvm import to_device

    monkeypatch.setenv("TVMFRONT_CACHE_DIR", str(tmp_path))
    module = tvf.compile_inference(_model(), (2, 1, 8, 8), records=False)
    params = [to_device(np.zeros(p["shape"], "float32"), module.device)
              for p in module.manifest["parameters"]]
    good = to_device(np.zeros((2, 1, 8, 8), "float32"), module.device)
    module._function("predict")(good, *params)
    with pytest.raises(Exception, match="9 vs. 8"):
        module._function("predict")(to_device(np.zeros((2, 1, 9, 8), "float32"), module.device),
                                    *params)


def test_a_failing_side_build_falls_back_to_one_piece(tmp_path, monkeypatch, caplog):
    def boom(self):
        self.errors.append(RuntimeError("side build exploded"))

    monkeypatch.setattr(split_build.SideBuild, "_run", boom)
    module, losses, _ = _step(tmp_path, "fail", monkeypatch, SPLIT_BUILD=True)
    assert module.build_info["cache"] == "miss" and np.isfinite(losses).all()
    assert "side build exploded" in caplog.text
