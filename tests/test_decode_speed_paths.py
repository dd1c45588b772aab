"""The batch-1 decode step's fast paths: tvmfront's GEMV schedule (a Linear layer at batch 1
vectorized along its weight's contiguous K axis, not strided along N) and
InferenceModule.call_tensors (outputs kept as device tensors, so generate.sample feeds the
key/value caches back without host copies). Structure and results, not timings."""

import time

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import graph, nn, pipeline
from tvmfront import schedule as cpu_schedule
from tvmfront._tvm import te, tirx, to_numpy, tvm
from tvmfront.build import schedule_stage
from tvmfront.errors import ShapeError
from tvmfront.target import resolve_target

TARGET = resolve_target("x86")
SIZES = dict(vocab_size=13, context=10, d_model=16, nhead=2, num_layers=2, dim_feedforward=32)


def _linear(n, k, dtype="float32", epilogue=True):
    """y = x @ w.T + b as TE makes it (the weight [N, K] row-major), as a PrimFunc."""
    x = te.placeholder((1, k), dtype, "x")
    w = te.placeholder((n, k), dtype, "w")
    b = te.placeholder((n,), dtype, "b")
    r = te.reduce_axis((0, k), "r")
    y = te.compute((1, n), lambda i, j: te.sum(x[i, r] * w[j, r], axis=r), "dense")
    if not epilogue:
        return te.create_prim_func([x, w, y]), (x, w)
    z = te.compute((1, n), lambda i, j: y[i, j] + b[j], "bias_add")
    return te.create_prim_func([x, w, b, z]), (x, w, b)


def _run(func, arrays, out_shape, dtype):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=TARGET)
    args = [tvm.runtime.tensor(a) for a in arrays] + \
        [tvm.runtime.tensor(np.zeros(out_shape, dtype))]
    lib["main"](*args)
    return args[-1].numpy()


def _vectorized_weight_reads(func, weight="w"):
    """For each load of `weight` inside a vectorized loop: (the loop's var is in the last
    index, it is in an earlier index). Through the block's bindings."""
    found = []

    exprs = cpu_schedule._walk_expr

    def uses(e, names):
        hit = []
        exprs(e, lambda x: hit.append(type(x).__name__ == "Var" and x.name in names))
        return any(hit)

    def visit(node, vec_vars):
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.VECTORIZED:
            vec_vars = vec_vars | {node.loop_var.name}
        if type(node).__name__ in ("SBlockRealize", "BlockRealize") and vec_vars:
            bound = {iv.var.name for iv, v in zip(node.block.iter_vars, node.iter_values)
                     if uses(v, vec_vars)}

            def load(e):
                if type(e).__name__ in ("BufferLoad", "TensorLoad") and e.source.name == weight:
                    found.append((uses(e.indices[-1], bound),
                                  any(uses(i, bound) for i in e.indices[:-1])))
            if hasattr(node.block.body, "value"):
                exprs(node.block.body.value, load)
        for attr in ("body", "block", "then_case", "else_case"):
            child = getattr(node, attr, None)
            if child is not None:
                visit(child, vec_vars)
        for child in getattr(node, "seq", None) or []:
            visit(child, vec_vars)

    visit(func.body, frozenset())
    return found


@pytest.mark.parametrize("n, k", [(128, 512), (384, 128), (96, 128), (13, 16)])
def test_gemv_is_vectorized_along_k_and_exact(n, k):
    func, _ = _linear(n, k)
    new, rule = cpu_schedule.schedule_prim_func(func, TARGET, name="dense")
    assert rule.startswith("tvmfront.gemv"), rule
    reads = _vectorized_weight_reads(new)
    # the weight is read inside a vectorized loop, along K (its last, contiguous axis) only
    assert reads and all(last and not other for last, other in reads), reads
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype("float32") for s in ((1, k), (n, k), (n,)))
    got = _run(new, [x, w, b], (1, n), "float32")
    np.testing.assert_allclose(got, x.astype("float64") @ w.T.astype("float64") + b,
                               rtol=1e-5, atol=1e-4)


def test_gemv_float64_and_no_epilogue():
    func, _ = _linear(12, 40, "float64", epilogue=False)
    new, rule = cpu_schedule.schedule_prim_func(func, TARGET, name="dense")
    assert rule.startswith("tvmfront.gemv"), rule
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((1, 40)), rng.standard_normal((12, 40))
    np.testing.assert_allclose(_run(new, [x, w], (1, 12), "float64"), x @ w.T, rtol=1e-12)


@pytest.mark.parametrize("n, k", [(10, 84), (16, 12)])  # K not a multiple of the lanes
def test_gemv_leaves_a_ragged_k_to_the_other_rules(n, k):
    func, _ = _linear(n, k)
    new, rule = cpu_schedule.schedule_prim_func(func, TARGET, name="dense")
    assert not rule.startswith("tvmfront.gemv") and not rule.startswith("none"), rule
    rng = np.random.default_rng(2)
    x, w, b = (rng.standard_normal(s).astype("float32") for s in ((1, k), (n, k), (n,)))
    np.testing.assert_allclose(_run(new, [x, w, b], (1, n), "float32"),
                               x @ w.T + b, rtol=1e-5, atol=1e-5)


def test_gemv_does_not_take_a_gemm():
    x = te.placeholder((4, 64), "float32", "x")
    w = te.placeholder((32, 64), "float32", "w")
    r = te.reduce_axis((0, 64), "r")
    y = te.compute((4, 32), lambda i, j: te.sum(x[i, r] * w[j, r], axis=r), "dense")
    _, rule = cpu_schedule.schedule_prim_func(te.create_prim_func([x, w, y]), TARGET)
    assert not rule.startswith("tvmfront.gemv"), rule


def test_a_large_gemv_runs_in_parallel_and_builds_fast():
    # wide vector tiles once cost minutes of LLVM codegen: this one builds in well under 1 s
    func, _ = _linear(2048, 1024)
    new, rule = cpu_schedule.schedule_prim_func(func, TARGET, name="dense")
    assert rule.startswith("tvmfront.gemv") and "parallel" in rule, rule
    assert "parallel" in cpu_schedule.loop_kinds(new)
    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(s).astype("float32") for s in ((1, 1024), (2048, 1024),
                                                                   (2048,)))
    start = time.process_time()
    got = _run(new, [x, w, b], (1, 2048), "float32")
    assert time.process_time() - start < 10
    np.testing.assert_allclose(got, x.astype("float64") @ w.T.astype("float64") + b,
                               rtol=1e-5, atol=1e-3)


# ---- the decode step of a batch-1 CausalLM ---------------------------------------------

@pytest.fixture(scope="module")
def lm():
    tvf.manual_seed(3)
    model = nn.CausalLM(**SIZES)
    module = tvf.compile_inference(model, tvf.Spec((1, "seq"), "int64"),
                                   methods={"prefill": model.prefill_spec(1),
                                            "decode": model.decode_spec(1)})
    return model, module


def test_the_decode_steps_linear_layers_get_the_gemv_rule(lm):
    model = lm[0]
    mod, _ = graph.build_forward(model, tvf.Spec((1, "seq"), "int64"),
                                 {"decode": model.decode_spec(1)})
    scheduled = schedule_stage(TARGET)(pipeline.run(mod, pipeline.LOWERING))
    rules = {g.name_hint: str(f.attrs[cpu_schedule.RULE_ATTR])
             for g, f in scheduled.functions_items()
             if isinstance(f, tirx.PrimFunc) and "dense" in g.name_hint}
    gemv = [n for n, r in rules.items() if r.startswith("tvmfront.gemv")]
    # per layer: qkv, out projection, two feed-forward; and the tied head
    assert len(gemv) >= 5, rules


def test_batch1_decode_equals_forward_and_call_tensors_equals_call(lm):
    _, module = lm
    ids = np.random.default_rng(0).integers(0, SIZES["vocab_size"], size=(1, SIZES["context"]))
    full = module(ids)
    logits, k, v = module.call_tensors("prefill", ids[:, :3])
    want = module.prefill(ids[:, :3])
    np.testing.assert_array_equal(to_numpy(logits), want[0])
    np.testing.assert_array_equal(to_numpy(k), want[1])
    for p in range(3, SIZES["context"]):
        np.testing.assert_allclose(to_numpy(logits), full[:, p - 1], rtol=1e-4, atol=1e-4)
        logits, k, v = module.call_tensors("decode", ids[:, p:p + 1], np.array(p, np.int64),
                                           k, v)  # the caches go back as device tensors
    np.testing.assert_allclose(to_numpy(logits), full[:, -1], rtol=1e-4, atol=1e-4)
    _, k_all, v_all = module.prefill(ids)
    np.testing.assert_allclose(to_numpy(k), k_all, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_numpy(v), v_all, rtol=1e-4, atol=1e-4)


def test_call_tensors_checks_tensors_by_shape_and_dtype(lm):
    _, module = lm
    _, k, v = module.call_tensors("prefill", np.zeros((1, 2), np.int64))
    tok, pos = np.zeros((1, 1), np.int64), np.array(2, np.int64)
    with pytest.raises(ShapeError, match=r"decode: input 'k_cache': expected shape .* got "
                                         r"shape \(1, 2, 2, 10, 8\)"):
        module.call_tensors("decode", tok, pos, tvf._tvm.to_device(
            np.zeros((1, 2, 2, 10, 8), np.float32)), v)
    with pytest.raises(ShapeError, match=r"decode: input 'v_cache': .* dtype float64"):
        module.call_tensors("decode", tok, pos, k, tvf._tvm.to_device(
            np.zeros(tuple(int(d) for d in v.shape), np.float64)))
    with pytest.raises(ShapeError, match=r"decode: this method takes 4 inputs"):
        module.call_tensors("decode", tok, pos, k)
    with pytest.raises(ShapeError, match=r"decode: input 'token'"):
        module.call_tensors("decode", [[0]], pos, k, v)
    with pytest.raises(AttributeError, match="no compiled method 'decoder'"):
        module.call_tensors("decoder", tok)


def test_sample_keeps_the_caches_on_the_device(lm, monkeypatch):
    _, module = lm
    want = tvf.generate.sample(module, [1, 2, 3], steps=5, top_k=1)
    calls = []
    monkeypatch.setattr(type(module), "call", lambda *a: calls.append(a))  # never used
    assert (tvf.generate.sample(module, [1, 2, 3], steps=5, top_k=1) == want).all()
    assert calls == []
    full = module(np.array([[1, 2, 3, *want[:-1]]]))
    np.testing.assert_array_equal(want, full[0, 2:].argmax(-1))
