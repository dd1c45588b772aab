"""Default CPU schedules (tvmfront/schedule/).

1. Training steps (MLP; a small LeNet-like CNN with max and average pooling) built with and
   without the default schedules train identically: losses and parameters after two steps.
2. The scheduled training IR of LeNet (the model of examples/lenet_digits.py) and of the MLP:
   every kernel is marked scheduled, names the rule that scheduled it, and every kernel of
   non-trivial size has a parallel or vectorized loop.
3. Inference modules likewise (at batch 1 a Linear layer goes through tvmfront.gemv when its K
   is a multiple of the vector length, else dlight's GEMV rule),
   and scheduled inference modules predict what the naive ones predict.
4. The pass keeps already-scheduled kernels and never fails a build over a schedule; a rule
   that fails is logged with the kernel, the rule and the cause and counted in the build info
   (a rule that merely does not fit is not), and LeNet's and the MLP's builds have none.
"""

import logging
import re

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import graph, nn, pipeline
from tvmfront import schedule as cpu_schedule
from tvmfront.build import schedule_stage
from tvmfront.target import resolve_target

from _scheduled import run as run_scheduled


def _naive(monkeypatch):
    monkeypatch.setattr(cpu_schedule, "default_cpu_schedule", lambda mod, target, *a, **kw: mod)
    # The compile cache cannot see the patch: a hit would return the scheduled build.
    monkeypatch.setenv("TVMFRONT_CACHE", "0")


def _mlp():
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(),
                         nn.Linear(96, 10))


def _small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 12x12 -> 6x6
        nn.Conv2d(4, 8, 3), nn.ReLU(), nn.AvgPool2d(2),                # -> 4x4 -> 2x2
        nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10))


def _lenet():  # examples/lenet_digits.py
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))


TRAIN_CASES = {  # name -> (model, input shape, optimizer)
    "mlp": (_mlp, (16, 64), lambda: tvf.optim.SGD(0.05, momentum=0.9)),
    "cnn": (_small_cnn, (8, 1, 12, 12), lambda: tvf.optim.Adam(lr=1e-2)),
}


def _compile_training(case):
    build_model, x_shape, optimizer = TRAIN_CASES[case]
    tvf.manual_seed(0)
    return tvf.compile_training(build_model(), nn.CrossEntropyLoss(), optimizer(),
                                inputs=x_shape, labels=(x_shape[0],))


def _two_steps(module, x_shape):
    rng = np.random.default_rng(1)
    losses = []
    for _ in range(2):
        x = rng.standard_normal(x_shape).astype("float32")
        y = rng.integers(0, 10, x_shape[0]).astype("int64")
        losses.append(module.step(x, y, lr=0.05))
    return np.array(losses), module.state_dict()


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_scheduled_training_matches_naive(case, monkeypatch):
    x_shape = TRAIN_CASES[case][1]
    losses, params = _two_steps(_compile_training(case), x_shape)
    with monkeypatch.context() as m:
        _naive(m)
        naive_module = _compile_training(case)
        assert naive_module.build_info["cache"] == "off"  # really built without schedules
        naive_losses, naive_params = _two_steps(naive_module, x_shape)
    np.testing.assert_allclose(losses, naive_losses, rtol=1e-5)
    assert losses[1] != losses[0]  # the parameters did change between the steps
    for name in naive_params:
        np.testing.assert_allclose(params[name], naive_params[name], rtol=1e-5, atol=1e-7,
                                   err_msg=name)


# ---- the scheduled IR ---------------------------------------------------------------------

def _scheduled(mod):
    """(scheduled module, target); fails if any default schedule rule failed on a kernel."""
    target = resolve_target("x86")
    fallbacks = {}
    scheduled = schedule_stage(target, fallbacks=fallbacks)(pipeline.run(mod, pipeline.LOWERING))
    assert fallbacks == {}, fallbacks
    return scheduled, target


def _training_ir(build_model, x_shape, optimizer):
    tvf.manual_seed(0)
    mod, sig = graph.build_training(build_model(), nn.CrossEntropyLoss(), x_shape, (x_shape[0],))
    mod = graph.append_optimizer(graph.gradient(mod), sig, optimizer)
    return _scheduled(mod)


def _inference_ir(build_model, x_shape):
    tvf.manual_seed(0)
    mod, _ = graph.build_forward(build_model(), x_shape)
    return _scheduled(mod)


def _check_every_kernel_scheduled(mod):
    rules = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvf.tirx.PrimFunc):
            continue
        name = gvar.name_hint
        assert cpu_schedule.is_scheduled(func), name
        rule = str(func.attrs[cpu_schedule.RULE_ATTR])
        rules[name] = rule
        work = cpu_schedule.kernel_work(func, symbolic=True)  # a symbolic batch at 64
        kinds = cpu_schedule.loop_kinds(func)
        # A gather split by its index divisors into unrolled, affine pieces counts as
        # scheduled: LeNet's max-pool gradient (stride-2 reads LLVM does not vectorize) runs
        # 12-49x faster that way than its earlier vectorized form with a test per tap.
        unrolled_split = "unrolled" in kinds and "split" in rule
        if work is not None and work >= cpu_schedule.SMALL_WORK and not unrolled_split:
            assert kinds & {"parallel", "vectorized"}, f"{name} ({work} iterations): {rule}"
    assert rules
    print("\n".join(f"  {n}: {r}" for n, r in sorted(rules.items())))
    return rules


def test_lenet_training_kernels_are_scheduled():
    mod, _ = _training_ir(_lenet, (64, 1, 16, 16), tvf.optim.Adam(lr=2e-3))
    rules = _check_every_kernel_scheduled(mod)
    # The heavy kernels get tvmfront's tiled, vectorized rule.
    # (the forward's GEMMs and convolutions carry their bias adds, drop_unread_inputs, and
    # their ReLUs: relu's gradient reads relu's output)
    for name in ("fused_conv2d_bias_add_relu", "fused_conv2d1_bias_add1_relu1", "conv2d_grad0",
                 "conv2d_grad1", "fused_dense_bias_add2_relu2", "dense_grad01"):
        name = _named(rules, name)
        assert "tiled[" in rules[name] and "v" in rules[name].split("tiled[")[1], rules[name]
    assert all(not r.startswith("none") for n, r in rules.items()
               if "one_minus_pow" not in n), rules  # only 0-d kernels are left alone


def test_mlp_training_kernels_are_scheduled():
    mod, _ = _training_ir(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(),
                                                nn.Linear(256, 256), nn.ReLU(),
                                                nn.Linear(256, 10)),
                          (64, 1, 8, 8), tvf.optim.Adam(lr=1e-3))
    _check_every_kernel_scheduled(mod)


def test_symbolic_batch_training_kernels_are_scheduled():
    """With a symbolic batch, the MLP's kernels get the schedules of batch 64: its Linear
    layers' GEMMs register-tiled and vectorized (at first every symbolic kernel but the
    optimizer's was left as a serial loop nest: a 13.5x slower step)."""
    tvf.manual_seed(0)
    mod, sig = graph.build_training(_mlp(), nn.CrossEntropyLoss(), ("batch", 64), ("batch",))
    mod, _ = _scheduled(graph.append_optimizer(graph.gradient(mod), sig, tvf.optim.Adam()))
    rules = _check_every_kernel_scheduled(mod)
    for name in ("fused_dense2_bias_add1", "dense_grad0", "dense_grad1",
                 "fused_dense_bias_add_relu"):
        name = _named(rules, name)
        assert re.search(r"=tiled\[\d+xv\d+", rules[name]), (name, rules[name])


def _named(rules, name):
    """`name`, or the fused kernel it leads (a dense d/dx fused with the relu_grad after it:
    pipeline.untuple_gradients)."""
    return name if name in rules else next(n for n in rules if n.startswith(f"fused_{name}_"))


@pytest.mark.parametrize("batch", [1, 32])
def test_inference_kernels_are_scheduled(batch):
    mod, _ = _inference_ir(_lenet, (batch, 1, 16, 16))
    rules = _check_every_kernel_scheduled(mod)
    if batch == 1:
        assert any(r.startswith("dlight.cpu.GEMV") for r in rules.values()), rules


def test_a_gemv_whose_reduction_is_padded_to_the_tile_is_not_left_to_dlight():
    # A 24 -> 128 Linear at batch 1: dlight's GEMV vectorized all 128 outputs (gathers from
    # the weight's rows) over 64 unrolled steps of a 24-term sum, its block predicated on the
    # reduction only; the guard took any predicate for an output remainder, and LLVM's
    # codegen of the kernel ran for over 5 minutes (a Transformer layer's step at batch 1, T 1)
    x = tvf.te.placeholder((1, 24), "float32", name="x")
    w = tvf.te.placeholder((128, 24), "float32", name="w")
    out = tvf.ops.dense.te_forward(x, w)
    func, rule = cpu_schedule.schedule_prim_func(tvf.te.create_prim_func([x, w, out]),
                                                 resolve_target("x86"))
    assert not rule.startswith("dlight"), rule
    xv = np.random.default_rng(0).standard_normal((1, 24)).astype("float32")
    wv = np.random.default_rng(1).standard_normal((128, 24)).astype("float32")
    (got,) = run_scheduled(func, resolve_target("x86"), [xv, wv], [(1, 128)])
    np.testing.assert_allclose(got, xv @ wv.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 16])  # batch 1: dlight's GEMV for the Linear layers
def test_scheduled_inference_matches_naive(batch, monkeypatch):
    x = np.random.default_rng(2).standard_normal((batch, 1, 12, 12)).astype("float32")
    tvf.manual_seed(0)
    model = _small_cnn()
    fast = tvf.compile_inference(model, inputs=x.shape)
    with monkeypatch.context() as m:
        _naive(m)
        naive = tvf.compile_inference(model, inputs=x.shape)
        assert naive.build_info["cache"] == "off"
    np.testing.assert_allclose(fast(x), naive(x), rtol=1e-5, atol=1e-6)


# ---- the pass itself -----------------------------------------------------------------------

def test_already_scheduled_kernels_are_kept():
    mod, target = _inference_ir(_mlp, (4, 64))
    again = cpu_schedule.default_cpu_schedule(mod, target)
    for gvar, func in mod.functions_items():
        if isinstance(func, tvf.tirx.PrimFunc):
            assert again[gvar].same_as(func), gvar.name_hint


def _mlp_lowered(batch=4):
    tvf.manual_seed(0)
    mod, _ = graph.build_forward(_mlp(), (batch, 64))
    return pipeline.run(mod, pipeline.LOWERING)


def _raising(error):
    def rule(*args, **kwargs):
        raise error

    return rule


@pytest.mark.falls_back
def test_a_failing_rule_falls_back_and_says_so(monkeypatch, caplog):
    lowered = _mlp_lowered()
    normal = {}
    cpu_schedule.default_cpu_schedule(lowered, resolve_target("x86"), normal)
    tiled = sorted(k for k, r in normal.items() if "tiled[" in r)
    assert tiled  # the Linear layers at batch 4

    monkeypatch.setattr(cpu_schedule.gemm, "_tile_reduction", _raising(RuntimeError("boom")))
    # the batch-4 dots are short rows a lane reduction would take: off, so that the chain
    # reaches the scalar tile (a patch of the tile rule) and the plain loops
    monkeypatch.setattr(cpu_schedule.dispatch, "_lane_reduction",
                        _raising(cpu_schedule.NotApplicable("off")))
    report, fallbacks = {}, {}
    with caplog.at_level(logging.DEBUG, "tvmfront"):
        scheduled = cpu_schedule.default_cpu_schedule(lowered, resolve_target("x86"), report,
                                                      fallbacks)
    assert report and all(isinstance(r, str) for r in report.values())
    assert all(cpu_schedule.is_scheduled(scheduled[k]) for k in report)  # never a failed build
    assert sorted(fallbacks) == tiled  # exactly the kernels the rule was meant for
    for kernel in tiled:
        assert "tiled[" not in report[kernel]  # a simpler schedule
        # _tile_reduction_scalar is _tile_reduction without vectors: it fails as well
        assert fallbacks[kernel] == [f"{rule} on block dense: RuntimeError: boom"
                                     for rule in ("tile_reduction", "tile_reduction_scalar")]
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                  and r.name == "tvmfront.schedule" and f"kernel {kernel}:" in r.getMessage()]
        assert len(warned) == 2, caplog.text  # once each, though two candidates tried them
        assert all("on block dense failed" in m and "boom" in m for m in warned)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and not any(f"kernel {k}:" in r.getMessage() for k in tiled)], caplog.text


def test_a_rule_that_does_not_fit_is_no_fallback(monkeypatch, caplog):
    monkeypatch.setattr(cpu_schedule.gemm, "_tile_reduction",
                        _raising(cpu_schedule.NotApplicable("not this pattern")))
    fallbacks = {}
    with caplog.at_level(logging.DEBUG, "tvmfront"):
        cpu_schedule.default_cpu_schedule(_mlp_lowered(), resolve_target("x86"),
                                          fallbacks=fallbacks)
    assert fallbacks == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "does not apply (not this pattern)" in caplog.text  # at debug level


@pytest.mark.falls_back
def test_the_build_info_counts_fallback_kernels(monkeypatch, caplog):
    monkeypatch.setenv("TVMFRONT_CACHE", "0")  # the cache cannot see the patch
    tvf.manual_seed(0)
    model = _mlp()
    assert tvf.compile_inference(model, inputs=(4, 64)).build_info["fallback_kernels"] == {}
    monkeypatch.setattr(cpu_schedule.spatial, "_schedule_spatial", _raising(TypeError("bad arg")))
    with caplog.at_level(logging.WARNING, "tvmfront"):
        module = tvf.compile_inference(model, inputs=(4, 64))
    fallbacks = module.build_info["fallback_kernels"]
    assert sorted(fallbacks) == sorted(module.build_info["fallback_kernels"])
    assert len(fallbacks) == 3, fallbacks  # the three Linear kernels' spatial blocks failed
    assert all(re.fullmatch(r"schedule_spatial on block \w+: TypeError: bad arg", cause)
               for causes in fallbacks.values() for cause in causes), fallbacks
    assert all(f"kernel {k}:" in caplog.text for k in fallbacks)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype("float32")
    assert module(x).shape == (4, 10)


@pytest.mark.parametrize("op_name", ["matmul", "conv2d_stride2_backward"])
def test_large_kernels_get_their_special_forms_and_stay_exact(op_name):
    """A 1024x1024 GEMM packs its right operand into panels (its rows, 4 KiB apart, would
    alias in L1); a strided conv's derived d/dw mixes int32 and int64 indices, which the
    schedule narrows before packing. Both still compute what numpy computes."""
    from tvmfront import ops
    from tvmfront._tvm import te, to_device, tvm

    target = resolve_target("x86")
    rng = np.random.default_rng(0)
    if op_name == "matmul":
        shapes = [(1024, 1024), (1024, 1024)]
        xs = [te.placeholder(s, "float32", name=f"x{i}") for i, s in enumerate(shapes)]
        out, expect_rules = ops.matmul.te_forward(*xs), ("panels",)
        args = [rng.standard_normal(s).astype("float32") for s in shapes]
        want = args[0] @ args[1]
    else:
        x = te.placeholder((2, 8, 9, 9), "float32", name="x")
        w = te.placeholder((tvm.tirx.IntImm("int64", 16), 8, 3, 3), "float32", name="w")
        fwd = ops.conv2d.te_forward(x, w, stride=2, padding=1)
        dy = te.placeholder(fwd.shape, "float32", name="dy")
        xs, out = [dy, x, w], ops.conv2d.te_grad(dy, x, w, derived=True, stride=2, padding=1)[1]
        # vectorized over o: dy is strided along it, copied (in panels, or per image by the
        # strided weight-gradient rule on AVX-512)
        expect_rules = ("packed dy", "dy_t per image")
        args = [rng.standard_normal(tuple(int(d) for d in t.shape)).astype("float32") for t in xs]
        xp = np.pad(args[1], ((0, 0), (0, 0), (1, 1), (1, 1)))
        want = np.zeros((16, 8, 3, 3), "float32")
        for kh in range(3):
            for kw in range(3):
                win = xp[:, :, kh:kh + 9:2, kw:kw + 9:2]  # [n, c, 5, 5]
                want[:, :, kh, kw] = np.einsum("nohw,nchw->oc", args[0], win)
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(xs + [out]), target)
    assert any(r in rule for r in expect_rules) and "scalar" not in rule, rule
    lib = tvm.compile(func, target=target)
    result = tvm.runtime.empty(tuple(int(d) for d in out.shape), "float32", tvm.cpu())
    lib(*[to_device(a) for a in args], result)
    np.testing.assert_allclose(result.numpy(), want, rtol=1e-4, atol=1e-3)


def _gemm_form(form, m, k, n):
    """(TE inputs, output, numpy of the inputs) of one GEMM-family kernel as the ops build it:
    A B (matmul), A B^T (dense, and matmul's d/da), A^T B (matmul's d/db, dense's d/dw)."""
    from tvmfront import ops
    from tvmfront._tvm import te

    if form == "A B":
        a, b = te.placeholder((m, k), name="a"), te.placeholder((k, n), name="b")
        return [a, b], ops.matmul.te_forward(a, b), lambda x, y: x @ y
    if form == "A B^T":
        x, w = te.placeholder((m, k), name="x"), te.placeholder((n, k), name="w")
        return [x, w], ops.dense.te_forward(x, w), lambda x, w: x @ w.T
    a, dy = te.placeholder((k, m), name="a"), te.placeholder((k, n), name="dy")
    b = te.placeholder((m, n), name="b")  # matmul's d/db = a^T @ dy: [m, n] from [k, m], [k, n]
    return [a, dy], ops.matmul.te_grad(dy, a, b)[1], lambda a, dy: a.T @ dy


@pytest.mark.parametrize("form", ["A B", "A B^T", "A^T B"])
def test_gemm_family_packs_its_operands_into_panels_once(form):
    """At 512 each GEMM form reads its big strided operands from panels (rows 2 KiB apart
    alias in L1; a transposed weight goes straight into panels, not through a transposed
    copy first: that copy, column by column, cost more than the GEMM), every copy is
    scheduled with the GEMM, and the result is numpy's."""
    from tvmfront._tvm import te

    target = resolve_target("x86")
    inputs, out, ref = _gemm_form(form, 512, 512, 512)
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
    lanes = cpu_schedule.CpuParams(target).lanes("float32")
    assert re.search(rf"tiled\[\d+xv{2 * lanes}, parallel, packed \w+ \(panels\)", rule), rule
    if form == "A^T B":  # the broadcast operand too, in panels of the tile's rows
        assert re.search(r"\+a \(panels of \d+\)[],]", rule), rule
    assert "spatial" not in rule and rule.count("(panels") == (2 if form == "A^T B" else 1)
    _matches_numpy(func, target, inputs, out, ref)


def _matches_numpy(func, target, inputs, out, ref):
    """Run the scheduled PrimFunc on random inputs; its output must be numpy's `ref`."""
    from tvmfront._tvm import to_device, tvm

    args = [np.random.default_rng(0).standard_normal([int(d) for d in t.shape]).astype("float32")
            for t in inputs]
    lib = tvm.compile(func, target=target)
    result = tvm.runtime.empty([int(d) for d in out.shape], "float32", tvm.cpu())
    lib(*[to_device(a) for a in args], result)
    np.testing.assert_allclose(result.numpy(), ref(*args), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("mcpu, lanes, rows, fma", [("skylake-avx512", 16, 8, "zmm"),
                                                     ("haswell", 8, 6, "ymm")])
@pytest.mark.parametrize("form", ["A B", "A B^T", "A^T B"])
def test_gemm_family_is_scheduled_for_the_other_vector_width(form, mcpu, lanes, rows, fma):
    """This machine has one vector width; the other class is only compiled: a GEMM for an
    AVX-512 CPU gets 2-register vectors of 16 lanes and a tile of 8 rows (16 of AVX-512's 32
    registers accumulate), compiled to zmm FMAs, one per accumulator of the unrolled tile; for
    AVX2, 6 rows of 8-lane vectors in ymm (256 rows: the last tile partial,
    test_schedule_gemm_remainder_tile.py)."""
    from tvmfront._tvm import te, tvm

    target = resolve_target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    assert cpu_schedule.CpuParams(target).lanes("float32") == lanes
    inputs, out, _ = _gemm_form(form, 256, 256, 256)
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
    assert f"tiled[{rows}xv{2 * lanes}, parallel" in rule and "panels" in rule, rule
    asm = tvm.compile(func, target=target).mod.inspect_source("asm")
    fmas = re.findall(rf"vfmadd\w+\s+[^\n]*%{fma}", asm)
    assert len(fmas) >= 2 * rows, f"{len(fmas)} {fma} FMAs for a {rows}x2-register tile"


@pytest.mark.parametrize("form", ["A B", "A B^T", "A^T B"])
def test_narrow_gemm_outputs_get_full_vectors(form):
    """The MLP head (N=10) and the char Transformer's head (N=103, a prime: no register tile
    beside the vectors) compile to vector FMAs, none scalar. The prime axis is padded to 104
    (gemm.PRIME_PAD) for a register tile of 8 beside 2-register vectors: the forward and
    d/dw ran at ~47 GF/s as v128 alone (one vector load per FMA), ~90 so (one AVX-512 core).
    Padded, the result still matches numpy."""
    from tvmfront._tvm import te, tvm

    target = resolve_target("x86")
    lanes = cpu_schedule.CpuParams(target).lanes("float32")
    for m, k, n in [(64, 256, 10), (1024, 128, 103)]:
        inputs, out, ref = _gemm_form(form, m, k, n)
        func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
        asm = tvm.compile(func, target=target).mod.inspect_source("asm")
        assert re.findall(r"vfmadd\w*ps\s", asm) and not re.findall(r"vfmadd\w*ss\s", asm), rule
        if n == 103:
            assert f"tiled[8xv{2 * lanes}," in rule and "_pad" in rule, rule
            _matches_numpy(func, target, inputs, out, ref)


def test_prime_output_axis_is_padded_where_it_shares_the_most_loads():
    """The char Transformer's head over [16, 64] tokens: the vocabulary axis (103, a prime)
    shares the token vectors' loads. The vocabulary is padded to 104 and tiled (the kernel
    alone, one AVX-512 core: 1143 -> 297 us; unpadded, as 16 sequences x v16, it loaded one
    vector per FMA), beside vectors along the 64 positions (not the 16 sequences, whose copy
    reads a page per element: test_schedule_gemm_vector_axis); the result is numpy's."""
    from tvmfront import ops
    from tvmfront._tvm import te

    target = resolve_target("x86")
    x, w = te.placeholder((16, 64, 128), name="x"), te.placeholder((103, 128), name="w")
    out = ops.dense.te_forward(x, w)
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func([x, w, out]), target)
    assert re.search(r"dense=tiled\[(\d+x)?[48]xv32, .*\+dense_pad", rule), rule
    _matches_numpy(func, target, [x, w], out, lambda x, w: x @ w.T)


def test_one_register_vectors_only_where_the_tile_covers_more_outputs():
    """A weight gradient over operands larger than a cache takes one-register vectors when
    that lets its tile cover more outputs (a conv's d/dw: 4 channels x 3 taps x 8 lanes, not 3 x 16),
    not for a GEMM's d/dw, where 8 rows x 8 lanes cover what 4 x 16 do at half the speed.
    On AVX2 (16 registers of 8 lanes; with AVX-512's 32 registers the conv's d/dw takes two)."""
    from tvmfront import ops
    from tvmfront._tvm import te

    target = resolve_target("x86:avx2")
    lanes = cpu_schedule.CpuParams(target).lanes("float32")
    inputs, out, _ = _gemm_form("A^T B", 512, 1024, 128)  # the Transformer's ff2 d/dw
    _, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
    assert f"xv{2 * lanes}," in rule, rule
    x, w = te.placeholder((32, 32, 28, 28), name="x"), te.placeholder((64, 32, 3, 3), name="w")
    # unpadded: a same-size conv's d/dw has a rule of its own (conv_weight_grad.py)
    dy = te.placeholder(ops.conv2d.te_forward(x, w, stride=1, padding=0).shape, name="dy")
    dw = ops.conv2d.te_grad(dy, x, w, derived=False, stride=1, padding=0)[1]
    _, rule = cpu_schedule.schedule_prim_func(te.create_prim_func([dy, x, w, dw]), target)
    # the balanced tile (gemm._register_tiles) takes 4 channels x 3 taps of one vector each
    assert re.search(rf"tiled\[\dx3xv{lanes},", rule), rule


@pytest.mark.parametrize("transpose_b", [False, True])
def test_a_product_over_one_term_schedules_without_a_failed_rule(transpose_b):
    """Attention at sequence length 1: scores [.., 1, 1] @ v [.., 1, d] sums one term (as
    its gradients do, with transpose_b). dlight's GEMV asserted a reduction loop there and
    the kernel fell back with a warning; that assertion now means the rule does not apply.
    The rule that takes it computes numpy's product."""
    from tvmfront import ops
    from tvmfront._tvm import te, to_device, tvm
    a = te.placeholder((2, 4, 1, 1), name="a")
    b = te.placeholder((2, 4, 8, 1) if transpose_b else (2, 4, 1, 8), name="b")
    c = ops.batch_matmul.te_forward(a, b, transpose_b=transpose_b)
    failures = {}
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func([a, b, c]),
                                                 resolve_target("x86"), failures=failures)
    assert not failures, (failures, rule)
    rng = np.random.default_rng(0)
    av, bv = (rng.standard_normal([int(d) for d in t.shape]).astype("float32") for t in (a, b))
    out = tvm.runtime.empty([int(d) for d in c.shape], "float32", tvm.cpu())
    tvm.compile(func, target=resolve_target("x86"))(to_device(av), to_device(bv), out)
    want = av @ (np.swapaxes(bv, -1, -2) if transpose_b else bv)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)
