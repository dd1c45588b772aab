"""compile_training / compile_inference: model -> graph -> pipeline -> build -> module."""

from . import config, graph
from . import op as op_mod
from ._tvm import TVM_VERSION
from ._version import __version__
from . import pipeline as pipeline_mod
from .build import build
from .nn.loss import CrossEntropyLoss
from .runtime.modules import InferenceModule, TrainingModule
from .target import target_architecture, target_json, target_key


def _manifest(kind, sig, target):
    return {
        "kind": kind,
        "tvmfront_version": __version__,
        "tvm_version": TVM_VERSION,
        "target": target_json(target),
        "target_kind": target.kind.name,
        "target_key": target_key(target),
        "target_arch": target_architecture(target),  # CPU the library's host code runs on
        "inputs": sig.inputs.to_json(),
        "outputs": sig.outputs.to_json(),
        "parameters": [dict(name=n, **s.to_json()) for n, s in sig.params],
        "scalar_dtype": sig.scalar_dtype,
    }


def compile_training(model, loss, optimizer, inputs, labels, target="x86", records=None,
                     dump_ir=None, derived_gradients=None):
    """Compile forward, loss, backward and optimizer update into one train step.

    inputs / labels: TensorSpec or shape tuple of one batch; a bare label shape gets the
    loss's label dtype (int64 for CrossEntropyLoss, the output dtype for MSELoss).
    records: where tuning records come from (tvf.tune writes them): a records root holding
      one folder per target key, or one MetaSchedule database folder; None takes
      TVMFRONT_RECORDS or the default root (<repo>/schedules) when it exists; False, none.
      Only records made for this target are applied, default schedules cover the rest.
    dump_ir: directory receiving the IR after every pipeline stage (or TVMFRONT_DUMP_IR).
    derived_gradients: True uses every op's derived gradient even where an explicit `.grad`
      exists (or TVMFRONT_DERIVED_GRADIENTS=1).

    >>> step = tvf.compile_training(model, tvf.nn.CrossEntropyLoss(), tvf.optim.Adam(1e-3),
    ...                             inputs=(64, 1, 8, 8), labels=(64,))
    >>> loss = step.step(x_batch, y_batch)
    """
    if derived_gradients is None:
        derived_gradients = config.derived_gradients()
    with op_mod.derived_gradients(derived_gradients):
        mod, sig = graph.build_training(model, loss, inputs, labels)
        stages = [("gradient", graph.gradient),
                  ("append_optimizer", lambda m: graph.append_optimizer(m, sig, optimizer))]
        mod = pipeline_mod.run(mod, stages, dump_ir)
    built = build(mod, target, records, dump_ir and f"{dump_ir}/lowering")
    manifest = _manifest("training", sig, built.target)
    manifest["labels"] = sig.labels.to_json()
    manifest["loss"] = getattr(loss, "name", type(loss).__name__)
    if isinstance(loss, CrossEntropyLoss):
        manifest["num_classes"] = sig.outputs.shape[-1]
    manifest["optimizer"] = {
        "name": optimizer.name, "lr": optimizer.lr, "hyperparameters": optimizer.hyperparameters,
        "state": [dict(name=n, **s.to_json()) for n, s, _ in sig.state]}
    manifest["step"] = 0
    module = TrainingModule(built.library, manifest, model.state_dict(), graph.initial_state(sig),
                            library_bytes=built.library_bytes, executable=built.executable)
    return _remember(module, built, records)


def compile_inference(model, inputs, target="x86", records=None, dump_ir=None):
    """Compile the model's forward at the input spec; returns a callable InferenceModule.
    records: as for compile_training."""
    mod, sig = graph.build_forward(model, inputs)
    built = build(mod, target, records, dump_ir)
    module = InferenceModule(built.library, _manifest("inference", sig, built.target),
                             model.state_dict(), library_bytes=built.library_bytes,
                             executable=built.executable)
    return _remember(module, built, records)


def _remember(module, built, records):
    """Keep what tvf.tune needs on the module: the lowered, not yet scheduled IRModule, the
    target, the records argument, and how the build went (cache hit, kernels from records)."""
    module._lowered, module._target, module._records = built.lowered, built.target, records
    module._build_info = built.info
    return module
