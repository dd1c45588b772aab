"""Elementwise kernels that read each other's outputs, merged into one kernel with several
outputs: what FuseOps leaves apart because every one of those outputs is also returned.

An optimizer's update is the case: Adam's new first and second moments are outputs of the
step (its new state) and are read by the parameter's update too, and the clipped gradient
feeds both moments. FuseOps fuses a chain only into a single output, so each parameter
got four kernels (clip, first moment, second moment, update), each streaming the
parameter-sized tensors its predecessor had written: thirteen passes over a parameter's
size where seven (read g, m, v, p; write m, v, p) suffice, and four launches instead of
one. Merged, the clipped gradient is never written (its kernel is inlined where it is
read) and the moments are read back from cache right after they are computed.

A group is a set of call_tir bindings of one dataflow block, each calling a PrimFunc with no
reduction and one output, none a reshape (those become views later, unless merged: the
Transformer's bias-add d/dx, merged with the d(qkv) concatenation, was copied), all outputs
of one static shape and dtype, linked by reads of one another's outputs. It becomes one
Relax function marked Primitive (as FuseOps makes them), called where the group's last
binding was; FuseTIR then turns it into one PrimFunc. A group is left alone when a binding
outside it reads one of its outputs before its last binding (moving that reader would
reorder the block).
"""

from ._tvm import prim_func_type, relax, relax_call_tir_op, tirx
from .tir_walk import statements

MAX_NAME = 60  # characters of the merged kernel's name taken from its members' names


def merge_elementwise(mod):
    """The module with each group of elementwise kernels (see the module docstring) merged
    into one kernel."""
    builder = relax.BlockBuilder(mod)
    merged_any = False
    for gvar, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function) or (func.attrs and "Primitive" in func.attrs):
            continue
        if not isinstance(func.body, relax.SeqExpr):
            continue
        blocks = []
        for block in func.body.blocks:
            if isinstance(block, relax.DataflowBlock):
                block, merged = _merge_block(block, mod, builder)
                merged_any |= merged
            blocks.append(block)
        builder.update_func(gvar, relax.Function(
            func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure,
            func.attrs))
    return relax.transform.FuseTIR()(builder.get()) if merged_any else mod


def _kernel_args(binding, mod):
    """The arguments of `binding` when it is a call_tir of an elementwise kernel with one
    static output and no shape arguments, else None."""
    call = binding.value
    if not (isinstance(binding, relax.VarBinding) and isinstance(call, relax.Call)
            and call.op.same_as(relax_call_tir_op()) and len(call.args) == 2
            and isinstance(call.args[0], relax.GlobalVar)):
        return None
    func = mod[call.args[0]]
    out = call.ty_args[0]
    if not isinstance(func, prim_func_type()) or not isinstance(out, relax.TensorType):
        return None
    if not isinstance(out.shape, relax.ShapeExpr) or \
            not all(isinstance(d, tirx.IntImm) for d in out.shape.values) or not out.shape.values:
        return None
    if _has_reduction(func) or _may_reshape(func):
        return None  # a reshape becomes a view (reshape_views): merged, it would be a copy
    return list(call.args[1].fields)


def _may_reshape(func):
    """Whether `func` may be a reshape: TVM's has_reshape_pattern, or True where that fails
    (its flattened index is int32: "Literal value 2147549184 exceeds range of int32" over a
    tensor of 2^31 elements or more, which failed the whole build)."""
    try:
        return relax.analysis.has_reshape_pattern(func)
    except ValueError:
        return True


def _has_reduction(func):
    return any(int(iv.iter_type) != int(tirx.IterVar.DataPar)
               for node in statements(func.body)
               for iv in getattr(node, "iter_vars", None) or [])


def _shape_key(binding):
    out = binding.value.ty_args[0]
    return tuple(int(d) for d in out.shape.values), str(out.dtype)


def _merge_block(block, mod, builder):
    bindings = list(block.bindings)
    position = {b.var: i for i, b in enumerate(bindings)}
    calls = {i: a for i, b in enumerate(bindings) if (a := _kernel_args(b, mod)) is not None}
    readers = {}  # binding index -> indices of the bindings that read its var
    for i, b in enumerate(bindings):
        for v in relax.analysis.free_vars(b.value):
            if v in position:
                readers.setdefault(position[v], []).append(i)
    parent = {i: i for i in calls}

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, args in calls.items():
        for a in args:
            j = position.get(a) if isinstance(a, relax.Var) else None
            if j in calls and _shape_key(bindings[j]) == _shape_key(bindings[i]):
                parent[root(i)] = root(j)
    groups = {}
    for i in calls:
        groups.setdefault(root(i), []).append(i)
    replace = {}  # last member's index -> the bindings that replace the group
    dropped = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort()
        last, inside = members[-1], set(members)
        if any(r not in inside and r < last for m in members for r in readers.get(m, [])):
            continue
        new = _merged_bindings(bindings, members, readers, mod, builder)
        replace[last] = new
        dropped |= inside
    if not replace:
        return block, False
    out = []
    for i, b in enumerate(bindings):
        if i in replace:
            out.extend(replace[i])
        elif i not in dropped:
            out.append(b)
    return relax.DataflowBlock(out), True


def _merged_bindings(bindings, members, readers, mod, builder):
    """The bindings that replace the bindings at the indices `members`: a call of a new
    Primitive Relax function holding their calls, and one TupleGetItem per output that is
    read outside the group (or is an output of the block), bound to the member's own var so
    its readers stay as they are."""
    inside = set(members)
    params, param_of = [], {}
    local = {}
    inner = []
    outputs = []
    for m in members:
        b = bindings[m]
        call = b.value
        args = []
        for a in call.args[1].fields:
            if a in local:
                args.append(local[a])
            else:  # a var of the block, or a constant (a Primitive function takes none)
                if a not in param_of:
                    param_of[a] = relax.Var(getattr(a, "name", "const"), a.ty)
                    params.append(a)
                args.append(param_of[a])
        escapes = not isinstance(b.var, relax.DataflowVar) or any(
            r not in inside for r in readers.get(m, []))
        var_type = relax.Var if escapes else relax.DataflowVar
        local[b.var] = var_type(b.var.name, b.var.ty)
        inner.append(relax.VarBinding(local[b.var], relax.call_tir(
            call.args[0], relax.Tuple(args), call.ty_args[0])))
        if escapes:
            outputs.append(b.var)
    ret = local[outputs[0]] if len(outputs) == 1 else relax.Tuple([local[v] for v in outputs])
    func = relax.Function([param_of[a] for a in params],
                          relax.SeqExpr([relax.DataflowBlock(inner)], ret),
                          ret.ty, True).with_attr("Primitive", True)
    name = _unique_name(mod, [bindings[m].value.args[0].name_hint for m in members])
    gvar = builder.add_func(func, name)
    call = relax.Call(gvar, params)
    if len(outputs) == 1:
        return [relax.VarBinding(outputs[0], call)]
    merged = relax.DataflowVar("merged", ret.ty)
    return [relax.VarBinding(merged, call)] + [
        relax.VarBinding(v, relax.TupleGetItem(merged, k)) for k, v in enumerate(outputs)]


def _unique_name(mod, members_names):
    """A function name made of the merged kernels' names (FuseTIR names the PrimFunc after
    it), unique in `mod`."""
    parts = [n[len("fused_"):] if n.startswith("fused_") else n for n in members_names]
    base = ("fused_" + "_".join(parts))[:MAX_NAME].rstrip("_")
    taken = {g.name_hint for g in mod.get_global_vars()}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name
