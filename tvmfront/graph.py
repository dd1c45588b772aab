"""Model + specs -> Relax IRModule, and the two graph stages of training.

Functions of a training IRModule (inputs `x*`, labels `y`, loss extras `e*`, parameters
`p*`, buffers `b*`, optimizer state `s*`, all flat):
  predict(*x, *p, *b) -> out                            the forward in eval mode
  loss(*x, y, *e, *p, *b) -> (loss, *b')                forward in training mode + loss;
                                                        b': the buffers after the forward
                                                        (the loss alone when no buffers)
  loss_adjoint(...) -> ((loss, *b'), (dp...))           added by Relax's Gradient; one dp per
                                                        trainable parameter (requires_grad)
  (after the extras, a model with Dropout also takes rng_key [2] uint32 and rng_counter int64)
  train_step(*x, y, *e, lr, step, *scalars, *p, *b, *s) -> (loss, *p', *b', *s')
                                                        added by append_optimizer; scalars:
                                                        the optimizer's own (e.g. max_norm)
"""

import contextlib
import inspect
from dataclasses import dataclass, field

import numpy as np

from ._tvm import relax
from ._checks import is_float_dtype
from .errors import ShapeError
from .nn.dropout import Dropout, rng_inputs
from .spec import TensorSpec, is_symbolic
from .tensor import BOUND_KINDS, Tensor, Trace, new_var, resolve, tracing


@dataclass
class GraphSignature:
    """What the compiled functions take and give, recorded in the bundle manifest."""

    inputs: list  # [(name, TensorSpec)], one per forward argument
    labels: TensorSpec = None
    outputs: TensorSpec = None
    params: list = field(default_factory=list)  # [(name, TensorSpec)], one per Parameter
    frozen: list = field(default_factory=list)  # names of parameters with requires_grad False
    state: list = field(default_factory=list)  # [(name, TensorSpec, fill)]
    scalar_dtype: str = "float32"  # dtype of the lr and step inputs
    buffers: list = field(default_factory=list)  # [(name, TensorSpec)], one per Buffer
    extras: list = field(default_factory=list)  # [(name, TensorSpec)]: the loss's extra inputs
    rng: bool = False  # the step draws random numbers (Dropout): takes rng_key and rng_counter
    # {method name: ([(name, TensorSpec)] inputs, outputs: a TensorSpec, or a list of them
    # for a method returning a tuple)}: other methods of the
    # model compiled beside predict (eval mode), e.g. a one-token decode step with a KV cache
    methods: dict = field(default_factory=dict)
    # What calls must satisfy (Trace's min_sizes, max_sizes, id_ranges), per function:
    # {"predict" (the forward in eval mode), "step" (the forward in training mode and the
    # loss: the train step and loss functions): {kind: {dimension or input: n}}}
    bounds: dict = field(default_factory=dict)
    method_bounds: dict = field(default_factory=dict)  # the same per compiled method


def _bounds_of(trace, table, name):
    """Merge the trace's bounds into table[name] ({kind: {key: n}}); table gets no entry for
    a trace without any."""
    for kind, keep in BOUND_KINDS.items():
        for key, value in getattr(trace, kind).items():
            into = table.setdefault(name, {}).setdefault(kind, {})
            into[key] = keep(into.get(key, value), value)


def _forward_arg_names(model, method="forward"):
    """The names of forward's (or another method's) positional arguments; None for *args."""
    try:
        params = list(inspect.signature(getattr(model, method)).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _is_array(v):
    # numpy scalars have .shape and .dtype too, but in a shape tuple they are dimensions
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, np.generic)


def _is_one_spec(value):
    """A shape tuple of ints, a TensorSpec, an example array or a spec dict: one tensor."""
    if isinstance(value, (tuple, list)):
        return all(not isinstance(d, (tuple, list, dict, TensorSpec)) and not _is_array(d)
                   for d in value)
    return True


def named_specs(value, names, what, default_dtype="float32"):
    """[(name, TensorSpec)] from one spec, a tuple/list of specs (one per name) or a dict
    {name: spec}. `names` are forward's (or the loss's) argument names, None if unknown."""
    if isinstance(value, dict) and not (set(value) <= {"shape", "dtype"} and "shape" in value):
        if names is None:
            raise TypeError(f"{what}: a dict of specs needs named arguments, but the function "
                            f"takes *args; pass a tuple of specs in argument order")
        unknown = sorted(set(value) - set(names))
        # trailing arguments may be left out (they keep their defaults), as with a tuple
        last = max((names.index(n) for n in value if n in names), default=-1)
        missing = [n for n in names[:last + 1] if n not in value]
        if not value:  # {}: every argument missing
            raise TypeError(f"{what}: an empty dict; give a spec for each of the "
                            f"arguments {names}")
        if unknown or missing:
            raise TypeError(f"{what}: unknown names {unknown}, missing {missing}; the "
                            f"arguments are {names}")
        ordered = [n for n in names if n in value]
        return [(n, TensorSpec.of(value[n], default_dtype, what=f"{what}['{n}']"))
                for n in ordered]
    items = [value] if _is_one_spec(value) else list(value)
    if names is not None and len(names) == 1 and not _is_one_spec(value):
        held = "an array" if any(_is_array(v) for v in items) else "specs"
        raise ShapeError(f"{what}: got a {type(value).__name__} holding {held}; the compiled "
                         f"step takes one array here: pass the array itself or its shape")
    if not items:
        raise ShapeError(f"{what}: no specs given")
    if names is not None and len(items) > len(names):
        raise TypeError(f"{what}: {len(items)} specs for {len(names)} arguments {names}")
    labels = names if names is not None else [f"x{i}" for i in range(len(items))]
    return [(labels[i], TensorSpec.of(v, default_dtype,
                                      what=what if len(items) == 1 else f"{what}[{i}]"))
            for i, v in enumerate(items)]


def _vars(prefix, named, dims=None):
    return [new_var(prefix + name.replace(".", "_").replace("/", "_"), s.shape, s.dtype, dims)
            for name, s in named]


def _param_vars(named_params):
    return [new_var("p_" + name.replace(".", "_"), p.shape, p.dtype) for name, p in named_params]


def data_vars(sig, labels=False):
    """Fresh Relax vars for the batch: inputs, and with `labels` the labels, the extras and,
    when the model draws random numbers, the generator's key and counter (rng_vars).
    A symbolic dimension ("batch") is one TIR variable across them, new for each call: each
    Relax function defines its own."""
    dims = {}
    xs = _vars("x_", sig.inputs, dims)
    if not labels:
        return xs
    return (xs + [new_var("y", sig.labels.shape, sig.labels.dtype, dims)]
            + _vars("e_", sig.extras, dims) + (rng_vars() if sig.rng else []))


def rng_vars():
    """Dropout's runtime inputs: the key (the seed as 2 x uint32, Philox's key) and the
    counter (the step number, int64): new masks every step, the same for the same pair."""
    return [new_var("rng_key", (2,), "uint32"), new_var("rng_counter", (), "int64")]


def _draws_random_numbers(model):
    return any(isinstance(m, Dropout) and m.p > 0 for m in model.modules())


def buffer_vars(sig):
    return _vars("b_", sig.buffers)


def _emit_function(bb, name, args, body):
    """Emit Relax function `name`(args) whose dataflow body is `body()` -> Tensor(s)."""
    with bb.function(name, args):
        with bb.dataflow():
            result = body()
            results = result if isinstance(result, (tuple, list)) else [result]
            outs = [bb.emit_output(r.expr if isinstance(r, Tensor) else r) for r in results]
        bb.emit_func_output(relax.Tuple(outs) if isinstance(result, (tuple, list)) else outs[0])


class _Mode:
    """Run the model in training or eval mode for the trace, then restore each module's flag:
    the compiled functions' mode never depends on the mode the model is in."""

    def __init__(self, model, training):
        self.model, self.training = model, training

    def __enter__(self):
        self.saved = [(m, m.training) for m in self.model.modules()]
        self.model.train(self.training)

    def __exit__(self, *exc):
        for m, flag in self.saved:
            object.__setattr__(m, "training", flag)


def _traced_forward(bb, model, named_params, pvars, named_buffers, bvars, xs, input_names,
                    trainable, method=None):
    """(trace, output Tensor) of model.forward, or with `method` (a method name) of that
    method, whose output may also be a tuple/list of Tensors."""
    # named_params lists a tied Parameter once: every use reads the same input, so Relax's
    # Gradient sums the uses' adjoints into its one gradient.
    bindings = {id(p): Tensor(v, requires_grad=trainable and p.requires_grad, name=name)
                for (name, p), v in zip(named_params, pvars)}
    bindings.update({id(b): Tensor(v, name=name) for (name, b), v in zip(named_buffers, bvars)})
    trace = Trace(bb, bindings)
    call = model if method is None else getattr(model, method)
    with tracing(trace), _Mode(model, training=trainable):
        trace.inputs += zip(xs, input_names)
        out = call(*[Tensor(x, name=n) for x, n in zip(xs, input_names)])
    several = method is not None and isinstance(out, (tuple, list)) and len(out) > 0
    if not all(isinstance(o, Tensor) for o in (out if several else [out])):
        what = f"model.{method or 'forward'}"
        want = "a Tensor or a tuple of Tensors" if method else "one Tensor"
        raise TypeError(f"{what} must return {want}, got {type(out).__name__}")
    return trace, out


def build_forward(model, inputs, methods=None):
    """IRModule with `predict(*xs, *params, *buffers)` (eval mode), and its signature.
    methods: {name of a model method: its input specs}: each becomes a function
    `method_<name>(*its inputs, *params, *buffers)` (eval mode) returning its Tensor or tuple
    of Tensors, e.g. a one-token decode step that takes and returns a KV cache."""
    specs = named_specs(inputs, _forward_arg_names(model), "inputs")
    for name, spec in specs:
        if any(not is_symbolic(d) and d == 0 for d in spec.shape):
            # TVM's constant folding failed on it ("Divide by zero", an InternalError)
            raise ShapeError(f"inputs: {name} {tuple(spec.shape)} has a size-0 axis; a "
                             "compiled module takes at least one element along each (name an "
                             "axis, e.g. ('batch', 1, 8, 8), for any size)")
    named, named_buffers = model.named_parameters(), model.named_buffers()
    bb = relax.BlockBuilder()
    sig = GraphSignature(inputs=specs,
                         params=[(n, TensorSpec(p.shape, p.dtype)) for n, p in named],
                         frozen=[n for n, p in named if not p.requires_grad],
                         buffers=[(n, TensorSpec(b.shape, b.dtype)) for n, b in named_buffers])
    xs, pvars, bvars = data_vars(sig), _param_vars(named), buffer_vars(sig)
    result = {}

    def body():
        trace, out = _traced_forward(bb, model, named, pvars, named_buffers, bvars, xs,
                                     [n for n, _ in specs], trainable=False)
        _bounds_of(trace, sig.bounds, "predict")
        result["out"] = out
        return out

    _emit_function(bb, "predict", [*xs, *pvars, *bvars], body)
    out = result["out"]
    sig.outputs = TensorSpec.traced(out.shape, out.dtype)
    for name, method_inputs in (methods or {}).items():
        sig.methods[name] = _emit_method(bb, model, name, method_inputs, sig)
    return bb.get(), sig


def _emit_method(bb, model, name, inputs, sig):
    """Emit `method_<name>` for model.<name> at `inputs`; ([(name, spec)], [spec])."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_") \
            or not inspect.ismethod(getattr(model, name, None)) or name == "forward":
        raise TypeError(f"methods: {name!r} is not a public method of "
                        f"{type(model).__name__} (other than forward, which is predict)")
    specs = named_specs(inputs, _forward_arg_names(model, name), f"methods['{name}']")
    named, named_buffers = model.named_parameters(), model.named_buffers()
    xs, pvars, bvars = _vars("x_", specs, {}), _param_vars(named), buffer_vars(sig)
    result = {}

    def body():
        trace, out = _traced_forward(bb, model, named, pvars, named_buffers, bvars, xs,
                                     [n for n, _ in specs], trainable=False, method=name)
        result["out"] = out
        _bounds_of(trace, sig.method_bounds, name)
        # a 1-tuple is emitted as its one tensor: TVM 0.27's FuseOps/FuseTIR fail on one
        return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out

    _emit_function(bb, f"method_{name}", [*xs, *pvars, *bvars], body)
    out = result["out"]
    if isinstance(out, (tuple, list)):  # a list of specs: the method returns a tuple
        return specs, [TensorSpec.traced(o.shape, o.dtype) for o in out]
    return specs, TensorSpec.traced(out.shape, out.dtype)


def _loss_extra_names(loss_fn):
    names = _forward_arg_names(loss_fn) if hasattr(loss_fn, "forward") else None
    if names is None and callable(loss_fn) and not hasattr(loss_fn, "forward"):
        try:
            names = [p.name for p in inspect.signature(loss_fn).parameters.values()
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            names = None
    return None if names is None else names[2:]


def build_training(model, loss_fn, inputs, labels, extras=None):
    """IRModule with `predict` and `loss`, and its signature (no optimizer state yet).
    extras: specs of the loss's inputs after (output, labels), e.g. sample weights."""
    mod, sig = build_forward(model, inputs)
    # A bare label shape takes the loss's label dtype (int64 class ids) or the output's.
    sig.labels = TensorSpec.of(labels, getattr(loss_fn, "label_dtype", None) or sig.outputs.dtype,
                               what="labels")
    if extras is not None:
        sig.extras = named_specs(extras, _loss_extra_names(loss_fn), "extras",
                                 default_dtype=sig.outputs.dtype)
    if len(sig.frozen) == len(sig.params):
        raise ValueError("compile_training: every parameter has requires_grad=False; "
                         "there is nothing to train")
    named, named_buffers = model.named_parameters(), model.named_buffers()
    for name, param in named:
        if param.requires_grad and not is_float_dtype(param.dtype):
            raise TypeError(f"compile_training: parameter '{name}' is {param.dtype}; only "
                            "float parameters have gradients (set requires_grad=False to keep "
                            "it fixed, or register it as a buffer)")
    sig.rng = _draws_random_numbers(model)
    bb = relax.BlockBuilder(mod)
    data = data_vars(sig, labels=True)
    n_in, n_extras = len(sig.inputs), len(sig.extras)
    xs, y, evars = data[:n_in], data[n_in], data[n_in + 1:n_in + 1 + n_extras]
    rng = data[n_in + 1 + n_extras:]  # [key, counter] when sig.rng
    pvars, bvars = _param_vars(named), buffer_vars(sig)

    def body():
        draws = (rng_inputs(key=Tensor(rng[0], name="rng_key"),
                            counter=Tensor(rng[1], name="rng_counter"))
                 if rng else contextlib.nullcontext())
        with draws:
            trace, out = _traced_forward(bb, model, named, pvars, named_buffers, bvars, xs,
                                         [n for n, _ in sig.inputs], trainable=True)
        trace.inputs += [(y, "y"), *zip(evars, [n for n, _ in sig.extras])]
        with tracing(trace):
            loss = loss_fn(out, Tensor(y, name="y"),
                           *[Tensor(e, name=n) for e, (n, _) in zip(evars, sig.extras)])
        if not isinstance(loss, Tensor) or loss.shape != ():
            raise ShapeError(f"the loss must be a scalar Tensor, got "
                             f"{getattr(loss, 'shape', type(loss).__name__)}")
        _bounds_of(trace, sig.bounds, "step")  # the training forward's and the loss's
        if not named_buffers:
            return loss  # not a 1-tuple: TVM 0.27's FuseOps/FuseTIR fail on one
        # the buffers as the forward left them (unchanged ones pass through)
        return [loss, *[_as_dtype(bb, trace.bindings[id(b)], b.dtype) for _, b in named_buffers]]

    _emit_function(bb, "loss", [*data, *pvars, *bvars], body)
    sig.scalar_dtype = scalar_dtype([s.dtype for _, s in sig.params])
    return bb.get(), sig


def scalar_dtype(param_dtypes):
    """The dtype of a step's lr and step inputs: float64 where a parameter is float64, else
    float32. Never a half dtype (PyTorch's optimizers take Python floats and compute a
    float16 parameter's update in float32): float16 scalars held step counts exactly only to
    2048 (Adam's bias corrections read them) and rounded an lr below 6e-5 (float16's
    smallest normal) to a few bits."""
    return "float64" if "float64" in [str(d) for d in param_dtypes] else "float32"


def _as_dtype(bb, expr, dtype):
    """`expr` cast to `dtype` where its dtype differs: a parameter's gradient and new value,
    its optimizer state and a buffer's new value keep their dtype, whatever the data promoted
    them to (PyTorch's rule). float64 labels for a float32 model's MSELoss had made every
    parameter float64 after one step, and the next step failed in TVM's VM."""
    expr = resolve(expr)
    expr = expr.expr if isinstance(expr, Tensor) else expr
    if str(expr.ty.dtype) == str(np.dtype(dtype)):
        return expr
    return bb.emit(relax.op.astype(expr, str(np.dtype(dtype))))


def trainable(sig):
    """Names of the parameters the step updates, in signature order."""
    return [n for n, _ in sig.params if n not in sig.frozen]


def gradient(mod, sig=None):
    """Relax's Gradient on `loss` (its first output) w.r.t. every trainable parameter: adds
    `loss_adjoint`, returning ((loss, *buffers'), (one gradient per trainable parameter)).
    Without `sig`: a model of one input and no buffers, every parameter trained."""
    params = list(mod["loss"].params)[2:]
    if sig is not None:
        n_data = len(sig.inputs) + 1 + len(sig.extras) + (2 if sig.rng else 0)
        params = list(mod["loss"].params)[n_data:n_data + len(sig.params)]
        frozen = set(sig.frozen)
        params = [v for v, (n, _) in zip(params, sig.params) if n not in frozen]
    mod = relax.transform.Gradient("loss", require_grads=params, target_index=0)(mod)
    # On symbolic shapes Gradient re-emits the forward's calls inside loss_adjoint (a second
    # forward per step); they are identical to the originals, so CSE folds them back.
    return relax.transform.EliminateCommonSubexpr()(mod)


def append_optimizer(mod, sig, optimizer, apply_grads=False):
    """Add `train_step`: loss_adjoint, then the optimizer's update rule traced with ops.
    Its runtime scalars (0-d, sig.scalar_dtype) follow the data in the optimizer's
    `scalar_inputs` order: lr, step, then the rules' own (e.g. max_norm); never constants.
    apply_grads: also add `apply_grads(*g, *scalars, *p, *s) -> (*p', *s')`, the update alone
    from given gradients (one per trainable parameter): gradient accumulation over
    micro-batches runs loss_adjoint on each and applies their mean once."""
    # Frozen parameters get no optimizer state and come out of the step as they went in.
    names = trainable(sig)
    param_specs = {n: (s.shape, s.dtype) for n, s in sig.params if n in names}
    state_init = optimizer.init(param_specs)
    sig.state = [(n, TensorSpec(shape, dtype), fill) for n, (shape, dtype, fill) in state_init.items()]
    bb = relax.BlockBuilder(mod)
    data, bvars = data_vars(sig, labels=True), buffer_vars(sig)
    scalar_names = list(getattr(optimizer, "scalar_inputs", ("lr", "step")))

    def update_vars():  # fresh for each function: a Relax var has one definition site
        return ([new_var(n, (), sig.scalar_dtype) for n in scalar_names],
                _param_vars([(n, s) for n, s in sig.params]),
                [new_var("s_" + n.replace(".", "_").replace("/", "_"), s.shape, s.dtype)
                 for n, s, _ in sig.state])

    scalars, pvars, svars = update_vars()
    adjoint = mod.get_global_var("loss_adjoint")

    def update(grads, scalars, pvars, svars):
        """[*p', *s'] from {trainable name: gradient Tensor}."""
        params = {n: Tensor(v) for (n, _), v in zip(sig.params, pvars)}
        state = {n: Tensor(v) for (n, _, _), v in zip(sig.state, svars)}
        with tracing(Trace(bb)):
            hyper = {n: Tensor(v) for n, v in zip(scalar_names, scalars)}
            updates, new_state = optimizer.update(grads, state, params, hyper)
            new_params = [params[n] + updates[n] if n in grads else params[n]
                          for n, _ in sig.params]
        missing = set(state) ^ set(new_state)
        if missing:
            raise RuntimeError(f"optimizer {optimizer!r}: update returned state {sorted(new_state)}"
                               f" but init declared {sorted(state)}")
        return [*[_as_dtype(bb, p, s.dtype) for p, (_, s) in zip(new_params, sig.params)],
                *[_as_dtype(bb, new_state[n], s.dtype) for n, s, _ in sig.state]]

    def body():
        result = bb.emit(relax.Call(adjoint, [*data, *pvars, *bvars]))
        outs = bb.emit(relax.TupleGetItem(result, 0))  # (loss, *buffers'), or loss alone
        loss = bb.emit(relax.TupleGetItem(outs, 0)) if bvars else outs
        new_buffers = [bb.emit(relax.TupleGetItem(outs, 1 + i)) for i in range(len(bvars))]
        grads_tuple = bb.emit(relax.TupleGetItem(result, 1))
        specs = dict(sig.params)
        grads = {n: Tensor(_as_dtype(bb, bb.emit(relax.TupleGetItem(grads_tuple, i)),
                                     specs[n].dtype)) for i, n in enumerate(names)}
        new_params_and_state = update(grads, scalars, pvars, svars)
        p = len(sig.params)
        return [loss, *new_params_and_state[:p], *new_buffers, *new_params_and_state[p:]]

    _emit_function(bb, "train_step", [*data, *scalars, *pvars, *bvars, *svars], body)
    if apply_grads:
        specs = dict(sig.params)
        gvars = [new_var("g_" + n.replace(".", "_"), specs[n].shape, specs[n].dtype)
                 for n in names]
        scalars, pvars, svars = update_vars()
        _emit_function(bb, "apply_grads", [*gvars, *scalars, *pvars, *svars],
                       lambda: update({n: Tensor(g) for n, g in zip(names, gvars)}, scalars,
                                      pvars, svars))
    return bb.get()


def initial_state(sig):
    """{state name: numpy array} filled as the optimizer's init declared."""
    return {n: np.full(s.shape, fill, dtype=s.dtype) for n, s, fill in sig.state}
