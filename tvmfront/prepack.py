"""Inference weights packed once, not on every call: the ``prepack_weights`` stage.

A dense kernel (x[M, K] @ w[N, K]^T, a Linear layer) reads its weight strided along the
output axis its vectors run on, so its default schedule copies the weight into panels
[N / P, K, P] on every call (or, where that copy costs too much, packs the activations and
writes its tiles back transposed). An inference module's weights are constants of the
forward, so the panels can be made once: this stage rewrites ``predict`` into

    transform_params(*params) -> (params, each weight of a dense replaced by its panels)
    predict_packed(*inputs, *transformed params, *buffers)   the forward on the panels
    predict(*inputs, *params, *buffers) = predict_packed(*inputs, *transform_params(*params),
                                                         *buffers)

The runtime (runtime/modules.py) calls transform_params when parameters are bound and then
predict_packed on every call; ``predict`` keeps its signature and results for every other
caller (a bundle loaded by the C++ runner or an older tvmfront), at the cost of packing per
call as before. The dense on panels iterates [M, N / P, P, K] and writes out[i, jo * P + ji]:
every access is linear, its vectors run along ji (contiguous in the panels and the output),
and the schedule tiles rows of x against them with no copy (schedule/gemm.py). The bundle's
parameter file keeps the weights as the model has them (state_dict is unchanged).

Only static shapes, float32, and a weight that one dense reads and nothing else does; the
weight's rows N a multiple of the panel width P (2 vectors: 32 on AVX-512, 16 on AVX2), or
at most P (one panel of N: the weight transposed). At batch 1 the GEMV rule (schedule/gemv.py)
reads the weight as it is, contiguously along K: such calls are left alone.
"""

from ._tvm import PyExprMutator, mutator, relax, relax_call_tir_op, s_tir, tirx, tvm

# The functions the stage makes; the runtime (which imports nothing of the frontend) names
# them too: runtime/modules.py's PARAM_TRANSFORM and PACKED_FORWARD.
TRANSFORM, PACKED = "transform_params", "predict_packed"

# Whether compile_inference packs dense weights once (off: every call packs, as before).
ENABLED = True


def _static(shape):
    """A shape as ints, None when a dimension is symbolic."""
    try:
        return [int(d) for d in shape]
    except TypeError:
        return None


def _dense_shape(func):
    """(M, N, K) when `func` is a plain float32 dense out[i, j] = sum_k a[i, k] * w[j, k]
    (one block, zero-initialized), else None."""
    if not isinstance(func, tirx.PrimFunc) or len(func.params) != 3:
        return None
    a, w, out = func.params  # TVM 0.27: a PrimFunc's parameters are its buffers
    shapes = [_static(b.shape) for b in (a, w, out)]
    if any(s is None or len(s) != 2 for s in shapes) or \
            any(str(b.dtype) != "float32" for b in (a, w, out)):
        return None
    (m, k), (n, k2), (m2, n2) = shapes
    if (k, m, n) != (k2, m2, n2):
        return None
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if len(blocks) != 1 or not _is_dense_block(sch.get(blocks[0]), a, w, out):
        return None
    return m, n, k


def _is_dense_block(block, a, w, out):
    """Whether the block computes out[i, j] += a[i, k] * w[j, k] over (i, j: spatial, k:
    reduction), initialized to 0."""
    iters = block.iter_vars
    if len(iters) != 3 or [int(v.iter_type) for v in iters] != [0, 0, 2]:
        return False
    i, j, k = (v.var for v in iters)
    body, init = block.body, block.init

    def load(e, buf, idx):
        return isinstance(e, tvm.ir.TensorLoad) and e.source.same_as(buf) and \
            len(e.indices) == 2 and all(x.same_as(y) for x, y in zip(e.indices, idx))

    if not (isinstance(body, tirx.BufferStore) and body.buffer.same_as(out)
            and all(x.same_as(y) for x, y in zip(body.indices, (i, j)))):
        return False
    if not (isinstance(init, tirx.BufferStore) and isinstance(init.value, tirx.FloatImm)
            and init.value.value == 0.0):
        return False
    v = body.value
    if not (isinstance(v, tirx.Add) and load(v.a, out, (i, j)) and isinstance(v.b, tirx.Mul)):
        return False
    m = v.b
    return (load(m.a, a, (i, k)) and load(m.b, w, (j, k))) or \
        (load(m.a, w, (j, k)) and load(m.b, a, (i, k)))


# Scheduled here (the default rules find no vector loop in a transpose): one panel per
# parallel iteration, read by blocks of P rows x PACK_BLOCK columns, each row's columns one
# contiguous run and the block's writes P-wide runs, both sides in L1 (the copy predict still
# makes on every call: the C++ runner's path, bench/peers.py's ops section).
PACK_BLOCK = 16

_PACK = """
@T.prim_func(private=True, s_tir=True)
def pack_panels(w: T.Buffer((T.int64({n}), T.int64({k})), "float32"),
                panels: T.Buffer((T.int64({no}), T.int64({k}), T.int64({p})), "float32")):
    T.func_attr({{"tirx.noalias": True, "op_pattern": 2, "tirx.is_scheduled": True}})
    for jo in T.parallel(T.int64({no})):
        for kb in range(T.int64({kb})):
            for ji in range(T.int64({p})):
                for kk in T.unroll(T.int64({block})):
                    with T.sblock("pack_panels"):
                        v_jo = T.axis.spatial(T.int64({no}), jo)
                        v_k = T.axis.spatial(T.int64({k}), kb * T.int64({block}) + kk)
                        v_ji = T.axis.spatial(T.int64({p}), ji)
                        T.reads(w[v_jo * T.int64({p}) + v_ji, v_k])
                        T.writes(panels[v_jo, v_k, v_ji])
                        panels[v_jo, v_k, v_ji] = w[v_jo * T.int64({p}) + v_ji, v_k]
"""

_DENSE = """
@T.prim_func(private=True, s_tir=True)
def dense_packed(a: T.Buffer((T.int64({m}), T.int64({k})), "float32"),
                 panels: T.Buffer((T.int64({no}), T.int64({k}), T.int64({p})), "float32"),
                 out: T.Buffer((T.int64({m}), T.int64({n})), "float32")):
    T.func_attr({{"tirx.noalias": True, "op_pattern": 4}})
    for i, jo, ji, kk in T.grid(T.int64({m}), T.int64({no}), T.int64({p}), T.int64({k})):
        with T.sblock("dense"):
            v_i, v_jo, v_ji, v_k = T.axis.remap("SSSR", [i, jo, ji, kk])
            T.reads(a[v_i, v_k], panels[v_jo, v_k, v_ji])
            T.writes(out[v_i, v_jo * T.int64({p}) + v_ji])
            with T.init():
                out[v_i, v_jo * T.int64({p}) + v_ji] = T.float32(0.0)
            out[v_i, v_jo * T.int64({p}) + v_ji] = out[v_i, v_jo * T.int64({p}) + v_ji] + \
                a[v_i, v_k] * panels[v_jo, v_k, v_ji]
"""


def _prim_func(template, **sizes):
    """The TVMScript `template` at `sizes`, parsed (its T is TVMScript's TIR namespace)."""
    return tvm.script.from_source(template.format(**sizes),
                                  extra_vars={"T": tvm.script.tirx}, s_tir=True)


def _panels_of(n, width):
    """The panel width for a weight of n rows: `width` when it divides n into several
    panels, n itself when n <= width (one panel: the weight transposed), else None."""
    if n % width == 0 and n > width:
        return width
    return n if n <= width else None


def _uses(func):
    """{var: times it is read} over the function's body."""
    counts = {}

    def visit(e):
        if isinstance(e, relax.Var):
            counts[e] = counts.get(e, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def _candidates(mod, func, params, width):
    """{param var: (M, N, K, P)} for the weights that the dense calls of `func` read, each
    read once (by that call) and nowhere else."""
    uses = _uses(func)
    params = set(params)
    found = {}

    def visit(e):
        if not (isinstance(e, relax.Call) and e.op.same_as(relax_call_tir_op())):
            return
        args = e.args[1].fields if isinstance(e.args[1], relax.Tuple) else []
        if len(args) != 2 or args[1] not in params or uses.get(args[1]) != 1:
            return
        shape = _dense_shape(mod[e.args[0]])
        if shape is None or shape[0] < 2:  # batch 1: the GEMV rule reads the weight as is
            return
        p = _panels_of(shape[1], width)
        if p is not None:
            found[args[1]] = (*shape, p)

    relax.analysis.post_order_visit(func.body, visit)
    return found


@mutator
class _OnPanels(PyExprMutator):
    """predict's body with each chosen weight read as its panels (`panels`: {weight var:
    its panels' var}) by `dense` ({weight var: the GlobalVar of its dense on panels})."""

    def __init__(self, mod, panels, dense):
        super().__init__(mod)
        self.panels, self.dense = panels, dense

    def visit_call_(self, call):
        if call.op.same_as(relax_call_tir_op()) and isinstance(call.args[1], relax.Tuple):
            x, w = (list(call.args[1].fields) + [None, None])[:2]
            if len(call.args[1].fields) == 2 and w in self.panels:
                return relax.call_tir(self.dense[w], [self.visit_expr(x), self.panels[w]],
                                      call.ty_args[0])
        return super().visit_call_(call)


def prepack_weights(mod, n_inputs, n_params, width):
    """The stage (see the module's docstring): `mod` with predict(*inputs, *params, *buffers)
    split into transform_params and predict_packed, when any dense weight qualifies;
    unchanged otherwise. width: the panel width for float32 (two vector registers: the
    register tile's width in schedule/gemm.py), None for no packing."""
    gvar = next((g for g in mod.get_global_vars() if g.name_hint == "predict"), None)
    if not ENABLED or width is None or gvar is None:
        return mod
    func = mod[gvar]
    inputs = list(func.params[:n_inputs])
    params = list(func.params[n_inputs:n_inputs + n_params])
    buffers = list(func.params[n_inputs + n_params:])
    chosen = _candidates(mod, func, params, width)
    if not chosen:
        return mod
    base = tvm.IRModule({g: f for g, f in mod.functions.items() if not g.same_as(gvar)},
                        attrs=mod.attrs)
    bb = relax.BlockBuilder(base)
    pack, dense, panels = {}, {}, {}
    for w, (m, n, k, p) in chosen.items():
        block = PACK_BLOCK if k % PACK_BLOCK == 0 else 1
        sizes = dict(m=m, n=n, k=k, p=p, no=n // p, block=block, kb=k // block)
        pack[w] = bb.add_func(_prim_func(_PACK, **sizes), "pack_panels")
        dense[w] = bb.add_func(_prim_func(_DENSE, **sizes), "dense_packed")
        panels[w] = relax.Var(f"{w.name}_panels", _panels_type(n, k, p))
    _emit_transform(bb, params, chosen, pack)
    on_panels = _OnPanels(bb.get(), panels, dense)
    body = on_panels.visit_expr(func.body)
    packed_params = [panels.get(p, p) for p in params]
    packed = relax.Function([*inputs, *packed_params, *buffers], body, func.ret_ty,
                            func.is_pure, func.attrs).with_attr("global_symbol", PACKED)
    bb.add_func(packed, PACKED)
    _emit_predict(bb, inputs, params, buffers)
    return bb.get()


def _panels_type(n, k, p):
    """The type of an [n, k] float32 weight's panels [n / p, k, p]."""
    return relax.TensorType((n // p, k, p), "float32")


def _fresh(var):
    return relax.Var(var.name, var.ty)


def _emit_transform(bb, params, chosen, pack):
    """transform_params(*params) -> a tuple: each chosen weight's panels, the rest as given."""
    args = [_fresh(p) for p in params]
    with bb.function(TRANSFORM, args):
        outs = []
        for p, a in zip(params, args):
            if p in chosen:
                _, n, k, width = chosen[p]
                a = bb.emit(relax.call_tir(pack[p], [a], _panels_type(n, k, width)))
            outs.append(a)
        bb.emit_func_output(relax.Tuple(outs))


def _emit_predict(bb, inputs, params, buffers):
    """predict(*inputs, *params, *buffers) = predict_packed(..., *transform_params(params))."""
    mod = bb.get()
    transform, packed = mod.get_global_var(TRANSFORM), mod.get_global_var(PACKED)
    xs, ps, bs = ([_fresh(v) for v in group] for group in (inputs, params, buffers))
    with bb.function("predict", [*xs, *ps, *bs]):
        lifted = bb.emit(relax.Call(transform, ps))
        items = [bb.emit(relax.TupleGetItem(lifted, i)) for i in range(len(ps))]
        bb.emit_func_output(bb.emit(relax.Call(packed, [*xs, *items, *bs])))
