"""compile_training / compile_inference: model -> graph -> pipeline -> build -> module."""

from . import config, graph
from . import op as op_mod
from ._tvm import TVM_VERSION
from ._version import __version__
from .nn.init import seed
from .nn.layers import _BatchNorm
from .nn.loss import CrossEntropyLoss
from .runtime.modules import InferenceModule, TrainingModule
from .spec import TensorSpec
from .target import resolve_target, target_architecture, target_json, target_key
from .tensor import BOUND_KINDS


def _named_json(named):
    return [dict(name=n, **s.to_json()) for n, s in named]


def _inputs_json(sig):
    """One input: {shape, dtype}, the format bundles have always had (older readers and
    tools keep working); several: [{name, shape, dtype}] in forward's argument order."""
    if len(sig.inputs) == 1:
        return sig.inputs[0][1].to_json()
    return _named_json(sig.inputs)


def _predict_one_batch(model, sig):
    """Why predict must run the samples it is given as one compiled batch, or None when it may
    split them into batches and pad a fixed batch's last (runtime.modules._unsplittable):
    - a BatchNorm with track_running_stats=False normalises with the batch's statistics in
      eval mode too: padding rows, or another split, changed every prediction;
    - a layer with batch_first=False (attention) reads axis 0 as the sequence;
    - an output whose first axis does not follow the batch, e.g. [4, B] at B = 4, was split
      and padded along its 4 rows. At a fixed batch B the forward is traced again at B + 1
      (shapes only, ~40 ms) to tell; a forward that does not trace there (one written for
      its batch: a reshape to B * T) is taken by its output's size, as before."""
    for name, layer in model.named_modules():
        if isinstance(layer, _BatchNorm) and not layer.track_running_stats:
            return (f"layer '{name}' (BatchNorm, track_running_stats=False) normalises with the "
                    f"batch's statistics in eval mode too")
        if getattr(layer, "batch_first", True) is False:
            # [T, B, E]: axis 0 is the sequence, whose positions attend to each other (split
            # or padded, a T = 3 call of a T = 2 layer was off by 0.5)
            return (f"layer '{name or type(layer).__name__}' takes its input sequence first "
                    f"(batch_first=False): axis 0 is no batch of independent samples")
    first = sig.inputs[0][1].shape[0] if sig.inputs[0][1].shape else None
    out = sig.outputs.shape
    if not out or out[0] != first:
        return f"its output has shape {tuple(out)} for a batch of {first}: its first axis is " \
            f"not the batch"
    if not isinstance(first, int):
        return None  # symbolic: the output's first axis is the batch's own dimension
    grown = [TensorSpec((s.shape[0] + 1, *s.shape[1:]), s.dtype)  # the batched inputs
             if s.shape and s.shape[0] == first else s for _, s in sig.inputs]
    try:
        _, sig_grown = graph.build_forward(model, grown[0] if len(grown) == 1 else grown)
    except Exception:  # noqa: BLE001 - a forward fixed to its batch (reshape(B * T, -1)):
        return None  # its output's size says the batch, as it did before this check
    if sig_grown.outputs.shape[:1] != (first + 1,):
        return (f"its output's first axis does not follow the batch (shape "
                f"{tuple(out)} at a batch of {first}, {tuple(sig_grown.outputs.shape)} at "
                f"{first + 1})")
    return None


def _model_facts(manifest, model, sig):
    """What the runtime needs to know of the model beyond its signature, into `manifest`."""
    why = _predict_one_batch(model, sig)
    if why is not None:
        manifest["predict_one_batch"] = why
    aliases = _aliases(model)
    if aliases:
        manifest["aliases"] = aliases


def _aliases(model):
    """{other name: first name} of every parameter and buffer the model reaches by several
    paths (tied weights): a compiled module's load_state_dict takes them under any, as the
    model's does (a PyTorch state_dict lists every name)."""
    out = {}
    for named in (model.named_parameters, model.named_buffers):
        first = {}
        for name, t in named(remove_duplicate=False):
            if first.setdefault(id(t), name) != name:
                out[name] = first[id(t)]
    return out


def _manifest(kind, sig, target):
    manifest = {
        "kind": kind,
        "tvmfront_version": __version__,
        "tvm_version": TVM_VERSION,
        "target": target_json(target),
        "target_kind": target.kind.name,
        "target_key": target_key(target),
        "target_arch": target_architecture(target),  # CPU the library's host code runs on
        "inputs": _inputs_json(sig),
        "outputs": sig.outputs.to_json(),
        "parameters": _named_json(sig.params),
        "frozen": list(sig.frozen),  # parameters the train step leaves unchanged
        "scalar_dtype": sig.scalar_dtype,
    }
    if sig.buffers:
        manifest["buffers"] = _named_json(sig.buffers)
    # id_ranges name inputs as the runtime does: a module of one input calls it "x"
    runtime_name = {sig.inputs[0][0]: "x"} if len(sig.inputs) == 1 else {}
    for kind in BOUND_KINDS:  # e.g. "min_sizes": {"predict": {...}, "step": {...}}
        per_function = {f: {runtime_name.get(k, k) if kind == "id_ranges" else k: n
                            for k, n in b[kind].items()}
                        for f, b in sig.bounds.items() if b.get(kind)}
        if per_function:
            manifest[kind] = per_function
    if sig.methods:
        manifest["methods"] = {
            name: {"inputs": _named_json(specs),
                   "outputs": ([o.to_json() for o in outs] if isinstance(outs, list)
                               else outs.to_json()),
                   **{kind: dict(b) for kind, b in sig.method_bounds.get(name, {}).items()
                      if b}}
            for name, (specs, outs) in sig.methods.items()}
    return manifest


def build_lowered(lowered, target, records, dump_ir):
    """tvmfront.build.build_lowered, imported when a compile runs (it loads TVM)."""
    from .build import build_lowered as build

    return build(lowered, target, records, dump_ir)


def _lower(mod, dump_ir, debug_nans, graph_stages=()):
    """The Relax module lowered to kernels (with NaN/Inf checks after every kernel under
    debug_nans), not yet scheduled. graph_stages: (name, fn) stages run before legalize
    (pipeline.lowering)."""
    from . import debug  # these subclass TVM classes: imported when a compile needs TVM
    from . import pipeline as pipeline_mod

    stages = pipeline_mod.lowering(debug.enabled(debug_nans), graph_stages)
    return pipeline_mod.run(mod, stages, dump_ir)


def _build(mod, target, records, dump_ir, debug_nans, graph_stages=()):
    """Lower, schedule, compile."""
    dump_ir = dump_ir or config.dump_ir_dir()
    return build_lowered(_lower(mod, dump_ir, debug_nans, graph_stages), target, records,
                         dump_ir)


def _check_objects(**objects):
    """TypeError naming the argument where a class was passed for an instance (nn.MSELoss,
    optim.Adam: a forgotten call), a model is no nn.Module, or an optimizer has no init and
    update: they failed deep inside with an unrelated message ('ignore_index must be an int,
    got Tensor', "'NoneType' object has no attribute 'init'")."""
    from .nn.module import Module
    for what, value in objects.items():
        if isinstance(value, type):
            raise TypeError(f"compile: {what} is the class {value.__name__}; pass an instance, "
                            f"e.g. {value.__name__}(...)")
        if what == "model" and not isinstance(value, Module):
            raise TypeError(f"compile: model must be an nn.Module, got {type(value).__name__}")
        if what == "loss" and not callable(value):
            raise TypeError(f"compile: loss must be a loss module (e.g. nn.CrossEntropyLoss()), "
                            f"got {value!r}")
        if what == "optimizer" and not (hasattr(value, "init") and hasattr(value, "update")):
            raise TypeError(f"compile: optimizer must be a tvf.optim optimizer (e.g. "
                            f"tvf.optim.Adam(1e-3)), got {value!r}")


def compile_training(model, loss, optimizer, inputs, labels, target="x86", records=None,
                     dump_ir=None, derived_gradients=None, debug_nans=None, extras=None,
                     accumulate=False):
    """Compile forward, loss, backward and optimizer update into one train step.

    The step runs the model in training mode and predict() in eval mode, whatever mode the
    model is in now (BatchNorm: batch statistics and running-statistics updates in the step,
    running statistics in predict). Buffers (register_buffer) go in and out of the step.
    inputs / labels: one batch's shape tuple, TensorSpec, or an example array (its shape and
      dtype are taken). A bare label shape gets the loss's label dtype (int64 for
      CrossEntropyLoss, the output dtype for MSELoss); CrossEntropyLoss takes labels of any
      integer dtype (e.g. TensorSpec((64,), "int32")). A model whose forward takes several
      tensors, e.g. forward(tokens, mask), takes a tuple/list of specs in argument order, or a
      dict {argument name: spec}; integer inputs (token ids) are specs of an integer dtype.
    extras: specs of the loss's inputs after (output, labels), e.g. sample weights for a loss
      `loss(output, labels, weights)`: one spec, a tuple/list, or a dict by argument name.
    Parameters with requires_grad=False are not trained (no gradient, no optimizer state);
    a Parameter shared by several modules is one parameter with one gradient (the sum over
    its uses) and one optimizer state.
    records: where tuning records come from (tvf.tune writes them): a records root holding
      one folder per target key, or one MetaSchedule database folder; None takes
      TVMFRONT_RECORDS or the default root (<repo>/schedules) when it exists; False, none.
      Only records made for this target are applied, default schedules cover the rest.
    dump_ir: directory receiving the IR after every pipeline stage (or TVMFRONT_DUMP_IR).
    derived_gradients: True uses every op's derived gradient even where an explicit `.grad`
      exists (so does None inside `with tvf.derived_gradients():`, or with
      TVMFRONT_DERIVED_GRADIENTS=1).
    accumulate: True also compiles the update alone, for gradient accumulation over
      micro-batches: module.accumulate(x, y) per micro-batch, then module.apply() (the mean
      of their gradients, one optimizer step).
    debug_nans: True checks every kernel's output for NaN/Inf and raises NonFiniteOpError
      naming the first op that made one (or tvf.debug_nans(), or TVMFRONT_DEBUG_NANS=1). Slower.

    >>> step = tvf.compile_training(model, tvf.nn.CrossEntropyLoss(), tvf.optim.Adam(1e-3),
    ...                             inputs=(64, 1, 8, 8), labels=(64,))
    >>> loss = step.step(x_batch, y_batch)
    """
    mod, sig = _training_graph(model, loss, optimizer, inputs, labels, extras,
                               derived_gradients, accumulate, dump_ir)
    built = _build(mod, target, records, dump_ir and f"{dump_ir}/lowering", debug_nans)
    manifest = _manifest("training", sig, built.target)
    _model_facts(manifest, model, sig)
    manifest["labels"] = sig.labels.to_json()
    if sig.extras:
        manifest["extras"] = _named_json(sig.extras)
    manifest["loss"] = getattr(loss, "name", None) or (
        loss.__name__ if callable(loss) and hasattr(loss, "__name__") else type(loss).__name__)
    if isinstance(loss, CrossEntropyLoss):
        manifest["num_classes"] = sig.outputs.shape[-1]
        manifest["ignore_index"] = int(loss.ignore_index)
        manifest["label_smoothing"] = float(loss.label_smoothing)
    manifest["optimizer"] = {
        "name": optimizer.name, "lr": optimizer.lr, "hyperparameters": optimizer.hyperparameters,
        "state": [dict(name=n, **s.to_json()) for n, s, _ in sig.state]}
    manifest["step"] = 0
    if accumulate:
        manifest["accumulate"] = True
    if sig.rng:  # Dropout's key: the seed of the last tvf.manual_seed (nn.init.seed())
        manifest["seed"] = seed()
    module = TrainingModule(built.library, manifest, model.state_dict(), graph.initial_state(sig),
                            library_bytes=built.library_bytes, executable=built.executable)
    return _remember(module, built, records)


def _training_graph(model, loss, optimizer, inputs, labels, extras, derived_gradients,
                    accumulate, dump_ir):
    """(the train step as a Relax module: forward, loss, gradient, optimizer; its signature)."""
    _check_objects(model=model, loss=loss, optimizer=optimizer)
    if derived_gradients is None:  # inside `with tvf.derived_gradients():` too
        derived_gradients = op_mod.deriving() or config.derived_gradients()
    with op_mod.derived_gradients(derived_gradients):
        mod, sig = graph.build_training(model, loss, inputs, labels, extras)
        stages = [("gradient", lambda m: graph.gradient(m, sig)),
                  ("append_optimizer",
                   lambda m: graph.append_optimizer(m, sig, optimizer, apply_grads=accumulate))]
        from . import pipeline as pipeline_mod  # loads TVM

        return pipeline_mod.run(mod, stages, dump_ir), sig


def lower_training(model, loss, optimizer, inputs, labels, derived_gradients=None,
                   extras=None, accumulate=False):
    """The IRModule of compile_training's train step with the same arguments, lowered to
    kernels but neither scheduled nor built (what tvf.tune and the schedules start from): for
    inspecting or checking kernels without paying for a build."""
    mod, _ = _training_graph(model, loss, optimizer, inputs, labels, extras, derived_gradients,
                             accumulate, None)
    return _lower(mod, None, None)


def compile_inference(model, inputs, target="x86", records=None, dump_ir=None, debug_nans=None,
                      methods=None):
    """Compile the model's forward in eval mode (whatever mode the model is in) at the input
    spec (shape, TensorSpec or example array; several for a forward of several tensors, as
    for compile_training); returns a callable InferenceModule. records, debug_nans: as for
    compile_training.
    methods: {name: input specs} compiles other methods of the model into the same module,
      sharing its parameters: `module.<name>(*arrays)` runs one and returns its Tensor's
      array, or a tuple for a method returning a tuple (e.g. `decode(token, pos, k_cache,
      v_cache) -> (logits, k_cache, v_cache)` for generation with a KV cache)."""
    _check_objects(model=model)
    mod, sig = graph.build_forward(model, inputs, methods)
    target = resolve_target(target)
    built = _build(mod, target, records, dump_ir, debug_nans, [_prepack_stage(sig, target)])
    manifest = _manifest("inference", sig, built.target)
    _model_facts(manifest, model, sig)
    module = InferenceModule(built.library, manifest,
                             model.state_dict(), library_bytes=built.library_bytes,
                             executable=built.executable)
    return _remember(module, built, records)


def _prepack_stage(sig, target):
    """The inference stage that packs dense weights once (tvmfront.prepack): predict splits
    into transform_params (run by the module when parameters are bound) and predict_packed.
    Panels are two vectors wide (the register tile of schedule/gemm.py), on every CPU target.
    (aarch64 was left out for a while: a tuned build gave wrong numbers; the cause was a
    wrong MetaSchedule schedule of the dense on panels, on x86 as well, which tuning now
    catches: tvmfront.tuning.correctness.)"""
    from . import prepack  # loads TVM
    from .schedule.params import CpuParams

    width = 2 * CpuParams(target).lanes("float32") if target.kind.name == "llvm" else None
    return ("prepack_weights",
            lambda mod: prepack.prepack_weights(mod, len(sig.inputs), len(sig.params), width))


def _remember(module, built, records):
    """Keep what tvf.tune needs on the module: the lowered, not yet scheduled IRModule, the
    target, the records argument, and how the build went (cache hit, kernels from records)."""
    module._lowered, module._target, module._records = built.lowered, built.target, records
    module.build_info = built.info
    return module
