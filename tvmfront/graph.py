"""Model + specs -> Relax IRModule, and the two graph stages of training.

Functions of a training IRModule (parameters `p*`, optimizer state `s*`, all flat):
  predict(x, *p) -> y                                   the forward
  loss(x, y, *p) -> scalar                              forward + loss
  loss_adjoint(x, y, *p) -> (loss, (dp...))             added by Relax's Gradient; one dp per
                                                        trainable parameter (requires_grad)
  train_step(x, y, lr, step, *scalars, *p, *s) -> (loss, *p', *s')  added by append_optimizer
"""

from dataclasses import dataclass, field

import numpy as np

from ._tvm import relax
from .errors import ShapeError
from .spec import TensorSpec
from .tensor import Tensor, Trace, new_var, tracing


@dataclass
class GraphSignature:
    """What the compiled functions take and give, recorded in the bundle manifest."""

    inputs: TensorSpec
    labels: TensorSpec = None
    outputs: TensorSpec = None
    params: list = field(default_factory=list)  # [(name, TensorSpec)], one per Parameter
    frozen: list = field(default_factory=list)  # names of parameters with requires_grad False
    state: list = field(default_factory=list)  # [(name, TensorSpec, fill)]
    scalar_dtype: str = "float32"  # dtype of the lr and step inputs


def _param_vars(named_params):
    return [new_var("p_" + name.replace(".", "_"), p.shape, p.dtype) for name, p in named_params]


def _emit_function(bb, name, args, body):
    """Emit Relax function `name`(args) whose dataflow body is `body()` -> Tensor(s)."""
    with bb.function(name, args):
        with bb.dataflow():
            result = body()
            results = result if isinstance(result, (tuple, list)) else [result]
            outs = [bb.emit_output(r.expr if isinstance(r, Tensor) else r) for r in results]
        bb.emit_func_output(relax.Tuple(outs) if isinstance(result, (tuple, list)) else outs[0])


def _traced_forward(bb, model, named_params, pvars, x, trainable):
    # named_params lists a tied Parameter once: every use reads the same input, so Relax's
    # Gradient sums the uses' adjoints into its one gradient.
    bindings = {id(p): Tensor(v, requires_grad=trainable and p.requires_grad, name=name)
                for (name, p), v in zip(named_params, pvars)}
    trace = Trace(bb, bindings)
    with tracing(trace):
        out = model(Tensor(x, name="x"))
    if not isinstance(out, Tensor):
        raise TypeError(f"model.forward must return one Tensor, got {type(out).__name__}")
    return trace, out


def build_forward(model, inputs):
    """IRModule with `predict(x, *params)`, and its signature."""
    inputs = TensorSpec.of(inputs, what="inputs")
    named = model.named_parameters()
    bb = relax.BlockBuilder()
    x = new_var("x", inputs.shape, inputs.dtype)
    pvars = _param_vars(named)
    result = {}

    def body():
        _, out = _traced_forward(bb, model, named, pvars, x, trainable=False)
        result["out"] = out
        return out

    _emit_function(bb, "predict", [x, *pvars], body)
    out = result["out"]
    sig = GraphSignature(inputs=inputs, outputs=TensorSpec(out.shape, out.dtype),
                         params=[(n, TensorSpec(p.shape, p.dtype)) for n, p in named],
                         frozen=[n for n, p in named if not p.requires_grad])
    return bb.get(), sig


def build_training(model, loss_fn, inputs, labels):
    """IRModule with `predict` and `loss`, and its signature (no optimizer state yet)."""
    mod, sig = build_forward(model, inputs)
    # A bare label shape takes the loss's label dtype (int64 class ids) or the output's.
    sig.labels = TensorSpec.of(labels, getattr(loss_fn, "label_dtype", None) or sig.outputs.dtype,
                               what="labels")
    if len(sig.frozen) == len(sig.params):
        raise ValueError("compile_training: every parameter has requires_grad=False; "
                         "there is nothing to train")
    named = model.named_parameters()
    bb = relax.BlockBuilder(mod)
    x = new_var("x", sig.inputs.shape, sig.inputs.dtype)
    y = new_var("y", sig.labels.shape, sig.labels.dtype)
    pvars = _param_vars(named)

    def body():
        trace, out = _traced_forward(bb, model, named, pvars, x, trainable=True)
        with tracing(trace):
            loss = loss_fn(out, Tensor(y, name="y"))
        if not isinstance(loss, Tensor) or loss.shape != ():
            raise ShapeError(f"the loss must be a scalar Tensor, got "
                             f"{getattr(loss, 'shape', type(loss).__name__)}")
        return loss

    _emit_function(bb, "loss", [x, y, *pvars], body)
    if sig.params:
        sig.scalar_dtype = sig.params[0][1].dtype
    return bb.get(), sig


def trainable(sig):
    """Names of the parameters the step updates, in signature order."""
    return [n for n, _ in sig.params if n not in sig.frozen]


def gradient(mod, sig=None):
    """Relax's Gradient on `loss` w.r.t. every trainable parameter (all when `sig` is None):
    adds `loss_adjoint`, returning (loss, (one gradient per trainable parameter))."""
    params = list(mod["loss"].params)[2:]
    if sig is not None:
        frozen = set(sig.frozen)
        params = [v for v, (n, _) in zip(params, sig.params) if n not in frozen]
    return relax.transform.Gradient("loss", require_grads=params)(mod)


def append_optimizer(mod, sig, optimizer):
    """Add `train_step`: loss_adjoint, then the optimizer's update rule traced with ops.
    Its runtime scalars (0-d, sig.scalar_dtype) follow x and y in the optimizer's
    `scalar_inputs` order: lr, step, then the rules' own (e.g. max_norm); never constants."""
    # Frozen parameters get no optimizer state and come out of the step as they went in.
    names = trainable(sig)
    param_specs = {n: (s.shape, s.dtype) for n, s in sig.params if n in names}
    state_init = optimizer.init(param_specs)
    sig.state = [(n, TensorSpec(shape, dtype), fill) for n, (shape, dtype, fill) in state_init.items()]
    bb = relax.BlockBuilder(mod)
    x = new_var("x", sig.inputs.shape, sig.inputs.dtype)
    y = new_var("y", sig.labels.shape, sig.labels.dtype)
    scalar_names = list(getattr(optimizer, "scalar_inputs", ("lr", "step")))
    scalars = [new_var(n, (), sig.scalar_dtype) for n in scalar_names]
    pvars = _param_vars([(n, s) for n, s in sig.params])
    svars = [new_var("s_" + n.replace(".", "_").replace("/", "_"), s.shape, s.dtype)
             for n, s, _ in sig.state]
    adjoint = mod.get_global_var("loss_adjoint")

    def body():
        result = bb.emit(relax.Call(adjoint, [x, y, *pvars]))
        loss = bb.emit(relax.TupleGetItem(result, 0))
        grads_tuple = bb.emit(relax.TupleGetItem(result, 1))
        grads = {n: Tensor(bb.emit(relax.TupleGetItem(grads_tuple, i))) for i, n in enumerate(names)}
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
        return [loss, *new_params, *[new_state[n] for n, _, _ in sig.state]]

    _emit_function(bb, "train_step", [x, y, *scalars, *pvars, *svars], body)
    return bb.get()


def initial_state(sig):
    """{state name: numpy array} filled as the optimizer's init declared."""
    return {n: np.full(s.shape, fill, dtype=s.dtype) for n, s, fill in sig.state}
