"""The parallel decisions of the GEMM family at the MLP's inference shapes (batch 64) on a
2-core AVX-512 and an AVX2 target: register-tiled Linear layers run in parallel from
GEMM_PARALLEL_MIN_ITERATIONS register FMAs (the 64 -> 256 layer does, the 256 -> 10 one does
not), the parallel loop runs chunks of serial tiles (one accumulator allocation per chunk,
not per tile), a weight packed once is swept panel by panel, Flatten is a view (no kernel),
and the answers stay numpy's."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront._tvm import tirx
from tvmfront.schedule import default_cpu_schedule
from tvmfront.schedule.analysis import _walk_stmts
from tvmfront.schedule.params import PARALLEL_CHUNKS_PER_CORE

nn = tvf.nn
AVX512 = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}
AVX2 = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}


def _mlp():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, 10))


def _scheduled(target):
    module = tvf.compile_inference(_mlp(), inputs=(64, 1, 8, 8), records=False, target=target)
    rules = {}
    scheduled = default_cpu_schedule(module._lowered, module._target, report=rules)
    return module, scheduled, rules


def _parallel_extents(func):
    extents = []
    _walk_stmts(func.body, lambda n: extents.append(int(n.extent)) if isinstance(
        n, tirx.For) and n.kind == tirx.ForKind.PARALLEL else None)
    return extents


@pytest.mark.parametrize("target", [AVX512, AVX2], ids=["avx512", "avx2"])
def test_linear_layers_parallel_by_register_fmas(target):
    _, scheduled, rules = _scheduled(target)
    assert "reshape" not in rules, rules  # Flatten: a view, no copy kernel
    by_shape = {}
    for name, rule in rules.items():
        panels = [p for p in scheduled[name].params if len(p.shape) == 3][0]
        by_shape[int(panels.shape[1])] = (name, rule)  # K of the panels [N / P, K, P]
    assert set(by_shape) == {64, 256}, rules  # 256 -> 10: K 256 too, one panel of 10
    small = [r for n, r in rules.items() if "packed2" in n]
    assert small and "parallel" not in small[0], rules
    for name, rule in rules.items():
        if "packed2" in name:
            continue
        assert "parallel" in rule, rules
        extents = _parallel_extents(scheduled[name])
        assert extents and max(extents) <= PARALLEL_CHUNKS_PER_CORE * 2, (name, extents)


def test_prepacked_panels_swept_outermost():
    _, scheduled, _ = _scheduled(AVX512)
    script = scheduled["fused_dense_packed1_bias_add_relu"].script()
    # the fused parallel loop starts with the panel index jo, then the row tiles
    assert "for jo_i_0_fused_0 in T.parallel(16)" in script, script


def test_answers_unchanged_at_batch_64():
    module = tvf.compile_inference(_mlp(), inputs=(64, 1, 8, 8), records=False)
    x = np.random.default_rng(1).standard_normal((64, 1, 8, 8)).astype("float32")
    p = [v.astype("float64") for v in module.state_dict().values()]
    h = np.maximum(x.reshape(64, -1) @ p[0].T + p[1], 0)
    h = np.maximum(h @ p[2].T + p[3], 0)
    np.testing.assert_allclose(module(x), h @ p[4].T + p[5], rtol=1e-4, atol=1e-4)
