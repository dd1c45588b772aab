"""A batched GEMM whose vector operand goes into panels (attention's q k^T: each head's k
read transposed) runs its batch axes outermost, in parallel, and the panel loop inside them
(tvmfront/schedule/gemm.py, _batch_loops): each core copies the panels of its own heads just
before its tiles read them and writes whole rows of their scores. With the panel loop
outermost, each core read every head's q and wrote a column strip of every head's scores
(16 x 4 heads of [64, 32]: 105 -> 79 us with the caches warm, 184 -> 136 us flushed, 2
threads of a 2-core AVX-512 Xeon). A long batched reduction keeps one loop (no blocks of
the reduction per batch index). Each computes numpy's product.
"""

import numpy as np
import pytest

from tvmfront import schedule as cpu_schedule
from tvmfront.target import resolve_target

PARALLEL = 1  # tirx.ForKind


def _scheduled(b, h, t, s, d, target="x86"):
    """(rule, {block: [(extent, kind) of its loops]}, check) of scores[b, h, t, s] =
    q[b, h, t, :] . k[b, h, s, :] over d, scheduled for `target`."""
    from tvmfront import ops
    from tvmfront._tvm import s_tir, te, to_device, tvm

    q = te.placeholder((b, h, t, d), name="q")
    k = te.placeholder((b, h, s, d), name="k")
    out = ops.batch_matmul.te_forward(q, k, transpose_b=True)
    target = resolve_target(target)
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func([q, k, out]), target)
    sch = s_tir.Schedule(func)
    loops = {}
    for name in ("k_global", out.op.name + "_update", out.op.name):
        try:
            block = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - no such block
            continue
        loops[name] = [(int(sch.get(lp).extent), int(sch.get(lp).kind))
                       for lp in sch.get_loops(block)]

    def check():
        rng = np.random.default_rng(0)
        qa = rng.standard_normal((b, h, t, d)).astype("float32")
        ka = rng.standard_normal((b, h, s, d)).astype("float32")
        result = tvm.runtime.empty((b, h, t, s), "float32", tvm.cpu())
        tvm.compile(func, target=target)(to_device(qa), to_device(ka), result)
        np.testing.assert_allclose(result.numpy(), qa @ ka.transpose(0, 1, 3, 2),
                                   rtol=1e-4, atol=1e-3)

    return rule, loops, check


@pytest.mark.parametrize("target", ["x86", "x86:avx2"])
def test_each_core_copies_the_panels_of_its_own_heads(target):
    rule, loops, check = _scheduled(16, 4, 64, 64, 32, target)
    assert "packed k (panels)" in rule, rule
    copy = loops["k_global"]
    # the copy sits in the parallel batch loop, inside the head loop: one head's panel at a
    # time, not a pass over every head before the tiles
    assert copy[0] == (16, PARALLEL), copy
    assert copy[1][0] == 4 and copy[1][1] != PARALLEL, copy
    assert np.prod([e for e, _ in copy[3:]]) <= 64 * 32, copy
    check()


def test_a_long_batched_reduction_keeps_one_loop():
    rule, _, check = _scheduled(4, 2, 64, 64, 1024)
    assert "packed k (panels)" in rule and "k-blocks" not in rule, rule
    check()
