"""Inference modules take their dense weights packed once (tvmfront.prepack): transform_params
packs them when parameters are bound, predict_packed runs on the panels, and predict keeps
its signature. The answers are the model's, after load_state_dict, through export / tvf.load,
and through the library's own predict (what the C++ runner and older readers call)."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import prepack
from tvmfront import records as records_mod
from tvmfront._tvm import relax, relax_call_tir_op, to_device, to_numpy
from tvmfront.build import schedule_lowered
from tvmfront.tuning.tasks import kernels_of
from tvmfront.runtime.modules import PACKED_FORWARD, PARAM_TRANSFORM

nn = tvf.nn
BATCH = 64


def _mlp():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, 10))


def _reference(state, x):
    """The MLP's forward in float64 numpy from a state_dict."""
    p = list(state.values())
    h = x.reshape(len(x), -1).astype("float64")
    h = np.maximum(h @ p[0].T + p[1], 0)
    h = np.maximum(h @ p[2].T + p[3], 0)
    return h @ p[4].T + p[5]


def _x(seed, batch=BATCH):
    return np.random.default_rng(seed).standard_normal((batch, 1, 8, 8)).astype("float32")


def _functions(module):
    return {gv.name_hint: f for gv, f in module._lowered.functions.items()}


def _kernels_called(func):
    """Names of the kernels a Relax function calls (call_tir)."""
    names = []
    relax.analysis.post_order_visit(func, lambda e: names.append(e.args[0].name_hint) if (
        isinstance(e, relax.Call) and e.op.same_as(relax_call_tir_op())) else None)
    return names


@pytest.fixture(scope="module")
def module():
    return tvf.compile_inference(_mlp(), inputs=(BATCH, 1, 8, 8), records=False)


def test_runtime_and_stage_name_the_same_functions():
    assert (PARAM_TRANSFORM, PACKED_FORWARD) == (prepack.TRANSFORM, prepack.PACKED)


def test_forward_runs_on_weights_packed_once(module):
    funcs = _functions(module)
    assert PARAM_TRANSFORM in funcs and PACKED_FORWARD in funcs
    # the packing kernels run in transform_params only, never in the forward
    packed_forward = _kernels_called(funcs[PACKED_FORWARD])
    assert packed_forward and not any("pack_panels" in k for k in packed_forward)
    assert sum("pack_panels" in k for k in _kernels_called(funcs[PARAM_TRANSFORM])) == 3
    # every dense weight reaches the forward as panels [N / P, K, P]
    shapes = [tuple(int(d) for d in p.ty.shape) for p in funcs[PACKED_FORWARD].params]
    assert shapes[1] == (8, 64, 32) and shapes[3] == (8, 256, 32) and shapes[5] == (1, 256, 10)
    # and no dense kernel copies an operand on each call
    target = module._target
    scheduled, _ = schedule_lowered(module._lowered, target, records_mod.select(False, target))
    notes = {gv.name_hint: str(f.attrs["tvmfront.schedule_rule"])
             for gv, f in scheduled.functions.items()
             if gv.name_hint.startswith("fused_dense_packed")}
    assert len(notes) == 3 and not any("packed" in n.split("[", 1)[1] for n in notes.values()), \
        notes


def test_tuning_counts_the_packing_as_run_once(module):
    # tvf.tune weighs kernels by their calls per forward: the packing is not one of them
    calls = {k.name: (k.calls, k.other_calls) for k in kernels_of(module)}
    packing = [c for name, c in calls.items() if "pack_panels" in name]
    assert len(packing) == 3 and all(c[0] == 0 and c[1] >= 1 for c in packing), calls
    assert all(c[0] == 1 for name, c in calls.items() if "dense_packed" in name), calls


def test_answers_are_the_models(module):
    for seed in range(2):
        x = _x(seed)
        np.testing.assert_allclose(module(x), _reference(module.state_dict(), x),
                                   rtol=1e-4, atol=1e-5)
    # the library's own predict (logical weights, packing on each call) agrees exactly
    x = _x(5)
    params = [to_device(v) for v in module.state_dict().values()]
    direct = to_numpy(module._vm["predict"](to_device(x), *params))
    np.testing.assert_array_equal(direct, module(x))
    # predict over several batches, the last padded
    many = _x(6, 2 * BATCH + 3)
    np.testing.assert_allclose(module.predict(many), _reference(module.state_dict(), many),
                               rtol=1e-4, atol=1e-5)


def test_new_parameters_are_packed_again():
    module = tvf.compile_inference(_mlp(), inputs=(BATCH, 1, 8, 8), records=False)
    x = _x(1)
    before = module(x)
    rng = np.random.default_rng(7)
    state = {k: rng.standard_normal(v.shape).astype(v.dtype) * 0.1
             for k, v in module.state_dict().items()}
    module.load_state_dict(state)
    after = module(x)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _reference(state, x), rtol=1e-4, atol=1e-5)
    # state_dict gives the weights as the model has them, not their panels
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


def test_exported_bundle_loads_and_agrees(module, tmp_path):
    path = module.export(str(tmp_path / "mlp"))
    loaded = tvf.load(path)
    x = _x(3)
    np.testing.assert_array_equal(loaded(x), module(x))
    assert [tuple(p["shape"]) for p in loaded.manifest["parameters"]] == \
        [tuple(v.shape) for v in module.state_dict().values()]


def test_batch_one_keeps_the_gemv():
    module = tvf.compile_inference(_mlp(), inputs=(1, 1, 8, 8), records=False)
    assert PARAM_TRANSFORM not in _functions(module)
    x = _x(2, 1)
    np.testing.assert_allclose(module(x), _reference(module.state_dict(), x),
                               rtol=1e-4, atol=1e-5)


def test_avx2_panels_are_two_avx2_vectors():
    module = tvf.compile_inference(_mlp(), inputs=(BATCH, 1, 8, 8), target="x86:avx2",
                                   records=False)
    shapes = [tuple(int(d) for d in p.ty.shape)
              for p in _functions(module)[PACKED_FORWARD].params]
    assert shapes[1] == (16, 64, 16) and shapes[3] == (16, 256, 16)
    if module.runnable:
        x = _x(4)
        np.testing.assert_allclose(module(x), _reference(module.state_dict(), x),
                                   rtol=1e-4, atol=1e-5)


def test_a_weight_read_twice_is_left_alone():
    tvf.manual_seed(1)
    first, second = nn.Linear(32, 32), nn.Linear(32, 32)
    second.weight = first.weight  # one parameter, read by two dense kernels
    model = nn.Sequential(first, nn.ReLU(), second)
    module = tvf.compile_inference(model, inputs=(16, 32), records=False)
    assert PARAM_TRANSFORM not in _functions(module)
    state = module.state_dict()
    p = list(state.values())
    assert len(p) == 3  # weight, bias, bias
    x = np.random.default_rng(0).standard_normal((16, 32)).astype("float32")
    h = np.maximum(x.astype("float64") @ p[0].T + p[1], 0)
    np.testing.assert_allclose(module(x), h @ p[0].T + p[2], rtol=1e-4, atol=1e-5)


def test_symbolic_batch_is_left_alone():
    module = tvf.compile_inference(_mlp(), inputs=tvf.TensorSpec(("batch", 1, 8, 8)),
                                   records=False)
    assert PARAM_TRANSFORM not in _functions(module)
    x = _x(8, 5)
    np.testing.assert_allclose(module(x), _reference(module.state_dict(), x),
                               rtol=1e-4, atol=1e-5)
