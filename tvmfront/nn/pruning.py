"""Magnitude pruning with masks held as buffers and applied in the forward.

``prune(model, amount=0.5, scope="global")`` reparametrizes each Linear and Conv2d (or the
layer types given) as PyTorch's ``torch.nn.utils.prune`` does: the Parameter ``weight``
becomes ``weight_orig``, a buffer ``weight_mask`` (0/1, the weight's dtype) is added, and the
layer's ``weight`` is ``weight_orig * weight_mask``, computed inside the forward of the
compiled step. Semantics are PyTorch's: the effective weight of a pruned entry is exactly 0
whatever the optimizer does (its gradient is 0; ``weight_orig`` there may still move under
momentum or weight decay, as in PyTorch, but never reaches the forward). The mask is a buffer,
so it is a runtime input of the compiled step: ``update_masks(module, amount)`` writes new
masks into a compiled module without recompiling.

``amount`` is the fraction of weights pruned in total (PyTorch's repeated ``prune.*`` calls
take a fraction of what is left; here the schedule's target sparsity is given directly):
exactly round(amount * n) entries are masked, n the size of each layer (scope="layer") or of
all pruned layers together (scope="global", one threshold, as ``prune.global_unstructured``).
Entries already masked are pruned first, so masks only grow as the amount grows. Ties in
magnitude go to the earlier entry.

``remove(model)`` folds ``weight_orig * weight_mask`` back into a plain ``weight`` Parameter
(``prune.remove``): compile and export that model for an inference bundle whose pruned weights
are exact zeros.

    >>> pruning.prune(model, amount=0.5)
    >>> module = tvf.compile_training(model, ...)
    >>> sched = pruning.PolynomialSparsity(0.9, begin_step=0, end_step=600, frequency=50)
    >>> pruning.fit(tvf.Trainer(module), x, y, sched, epochs=20)   # masks between epochs
    >>> model.load_state_dict(module.state_dict()); pruning.remove(model)
"""

import numpy as np

from .. import ops
from .._checks import is_whole
from ..tensor import current_trace
from .layers import Conv2d, Linear
from .module import Module, Parameter

_MASK, _ORIG = "weight_mask", "weight_orig"


class _Pruned:
    """Mixin of a pruned layer's class: `weight` is weight_orig * weight_mask."""

    _unpruned = None  # the layer's own class, set on each generated class

    @property
    def weight(self):
        if current_trace() is None:
            return self.weight_orig.data * self.weight_mask.data
        return ops.mul(self.weight_orig, self.weight_mask)

    @weight.setter
    def weight(self, value):
        raise AttributeError(f"{type(self).__name__}: the weight of a pruned layer is "
                             "weight_orig * weight_mask; set weight_orig, or call "
                             "tvf.nn.pruning.remove first")


_classes = {}


def _pruned_class(cls):
    if cls not in _classes:
        _classes[cls] = type(f"Pruned{cls.__name__}", (_Pruned, cls), {"_unpruned": cls})
    return _classes[cls]


def is_pruned(layer):
    return isinstance(layer, _Pruned)


def _reparametrize(layer):
    weight = layer._parameters.get("weight")
    if not isinstance(weight, Parameter):
        raise ValueError(f"prune: {type(layer).__name__} has no Parameter 'weight'")
    del layer._parameters["weight"]
    del layer.__dict__["weight"]
    layer.__class__ = _pruned_class(type(layer))
    layer.weight_orig = weight
    layer.register_buffer(_MASK, np.ones(weight.shape, weight.dtype))


def pruned_layers(model):
    """[(dotted name, layer)] of the pruned layers, depth first."""
    return [(n, m) for n, m in model.named_modules() if is_pruned(m)]


def prune(model, amount=0.5, scope="global", layers=(Linear, Conv2d)):
    """Prune the weights of every layer of the given types (already pruned layers are pruned
    further) by magnitude, in place; returns the model. See the module docstring."""
    layers = (layers,) if isinstance(layers, type) else layers
    if not isinstance(layers, (tuple, list)) or not layers or \
            not all(isinstance(t, type) and issubclass(t, Module) for t in layers):
        raise TypeError(f"prune: layers must be a layer class or a tuple of them, e.g. "
                        f"(nn.Linear, nn.Conv2d), got {layers!r}")
    chosen = [m for _, m in model.named_modules() if isinstance(m, tuple(layers))]
    if not chosen:
        raise ValueError(f"prune: the model has no layer of type "
                         f"{', '.join(t.__name__ for t in layers)}")
    owners = {}
    for m in chosen:
        w = m._parameters.get(_ORIG if is_pruned(m) else "weight")
        if id(w) in owners and owners[id(w)] is not m:
            raise ValueError(f"prune: {type(m).__name__} shares its weight with another "
                             f"{type(owners[id(w)]).__name__} (tied weights): one Parameter "
                             "cannot take two masks; prune with layers= excluding one of them")
        owners[id(w)] = m
    for m in chosen:
        if not is_pruned(m):
            _reparametrize(m)
    update_masks(model, amount, scope)
    return model


def _check(amount, scope, what="amount"):
    if scope not in ("global", "layer"):
        raise ValueError(f"pruning: scope must be 'global' or 'layer', got {scope!r}")
    if isinstance(amount, bool) or not isinstance(amount, (int, float, np.floating)) \
            or not 0 <= amount <= 1:
        raise ValueError(f"pruning: {what} must be a fraction in [0, 1], got {amount!r}")
    if isinstance(amount, int) and amount == 1:
        # torch.nn.utils.prune reads an int as a count of entries; here 1 was every weight
        raise ValueError(f"pruning: {what} is a fraction; the int 1 would prune every weight "
                         "(PyTorch's int amount is a count of entries): give 1.0 for all")


def _scope_groups(names, scope):
    """The layer names pruned together: each alone (scope 'layer') or all as one ('global')."""
    return [[n] for n in names] if scope == "layer" else [list(names)]


def _masks_only_grow(masks, amount, scope):
    """ValueError where `amount` masks fewer entries than are masked now: a second prune(0.3)
    after prune(0.5) revived weights ('already pruned layers are pruned further'; PyTorch's
    would prune 30% of what is left)."""
    for names in _scope_groups(masks, scope):
        size = sum(masks[n].size for n in names)
        masked = sum(int(np.sum(masks[n] == 0)) for n in names)
        if round(amount * size) < masked:
            where = f"layer '{names[0]}'" if scope == "layer" else "the pruned layers"
            raise ValueError(f"pruning: amount {amount} is below the sparsity {masked / size:.4g} "
                             f"{where} already have: amount is the total fraction pruned and "
                             "masks only grow (PyTorch's repeated prune takes a fraction of what "
                             "is left); give at least that, or remove() first")


def _magnitude_masks(weights, masks, amount, scope):
    """New masks {name: array}: round(amount * n) entries zeroed per layer or over all of
    them, the smallest |weight| first, entries already masked before any other."""
    def importance(n):
        return np.where(masks[n] != 0, np.abs(weights[n] * masks[n]), -1.0).ravel()

    out = {}
    for names in _scope_groups(weights, scope):
        scores = np.concatenate([importance(n) for n in names])
        k = round(amount * scores.size)
        keep = np.ones(scores.size, bool)
        keep[np.argsort(scores, kind="stable")[:k]] = False
        at = 0
        for n in names:
            size = masks[n].size
            out[n] = keep[at:at + size].reshape(masks[n].shape).astype(masks[n].dtype)
            at += size
    return out


def update_masks(target, amount, scope="global"):
    """Recompute the masks of every pruned layer of `target` for sparsity `amount`: a Module,
    or a compiled module (training or inference) of a pruned model, whose buffers are
    replaced in place with no recompile. Returns the achieved sparsity (masked fraction)."""
    _check(amount, scope)
    state = target.state_dict()
    names = [k[:-len(_MASK) - 1] for k in state if k.endswith("." + _MASK) or k == _MASK]
    if not names:
        raise ValueError("update_masks: nothing is pruned here (call tvf.nn.pruning.prune on "
                         "the model before compiling it)")
    key = {n: (f"{n}." if n else "") for n in names}
    masks = {n: np.asarray(state[key[n] + _MASK]) for n in names}
    weights = {n: np.asarray(state[key[n] + _ORIG]) for n in names}
    _masks_only_grow(masks, amount, scope)
    new = _magnitude_masks(weights, masks, amount, scope)
    state.update({key[n] + _MASK: new[n] for n in names})
    target.load_state_dict(state)
    return sparsity(target)["global"]


def sparsity(target):
    """{"global": masked fraction over all pruned layers, layer name: its fraction} of a
    Module or compiled module (from the masks)."""
    state = target.state_dict()
    masks = {k[:-len(_MASK) - 1]: np.asarray(v) for k, v in state.items()
             if k.endswith("." + _MASK) or k == _MASK}
    out = {n: float(np.mean(m == 0)) for n, m in masks.items()}
    total = sum(m.size for m in masks.values())
    out["global"] = sum(float(np.sum(m == 0)) for m in masks.values()) / total if total else 0.0
    return out


def remove(model):
    """Fold every pruned layer back to a plain `weight` Parameter holding weight_orig *
    weight_mask (the same Parameter object as weight_orig: ties and requires_grad stay), in
    place, as torch.nn.utils.prune.remove; returns the model."""
    layers = pruned_layers(model)
    if not layers:
        raise ValueError("remove: the model has no pruned layer")
    for _, m in layers:
        param = m.weight_orig
        param.data = (param.data * m.weight_mask.data).astype(param.data.dtype)
        del m._parameters[_ORIG], m._buffers[_MASK]
        del m.__dict__[_ORIG], m.__dict__[_MASK]
        m.__class__ = m._unpruned
        m.weight = param
    return model


class PolynomialSparsity:
    """Zhu & Gupta (2017)'s gradual pruning schedule: at step t,
    s_t = final + (initial - final) * (1 - (t - begin) / (end - begin)) ** power, held between
    updates every `frequency` steps (t is rounded down to begin + k * frequency), initial before
    `begin_step`, final from `end_step` on.

    >>> PolynomialSparsity(0.8, end_step=100)(50)   # 0.8 - 0.8 * 0.5 ** 3
    0.7
    """

    def __init__(self, final, initial=0.0, begin_step=0, end_step=1000, frequency=1, power=3):
        for name, v in (("final", final), ("initial", initial)):
            _check(v, "global", f"PolynomialSparsity's {name}")
        begin_step, end_step, frequency = (int(v) if isinstance(v, np.integer) else v
                                           for v in (begin_step, end_step, frequency))
        if not (isinstance(begin_step, int) and isinstance(end_step, int)
                and 0 <= begin_step < end_step):
            raise ValueError(f"PolynomialSparsity: need integers 0 <= begin_step < end_step, got "
                             f"{begin_step!r}, {end_step!r}")
        if not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"PolynomialSparsity: frequency must be an int >= 1, got "
                             f"{frequency!r}")
        if isinstance(power, bool) or not isinstance(power, (int, float, np.integer,
                                                              np.floating)) or \
                not np.isfinite(power) or power <= 0:
            # power -1 gave sparsities of -0.6 and -6.2, refused later as an "amount"
            raise ValueError(f"PolynomialSparsity: power must be a number > 0, got {power!r}")
        self.final, self.initial, self.power = float(final), float(initial), power
        self.begin, self.end, self.frequency = begin_step, end_step, frequency

    def __call__(self, step):
        if step < self.begin:
            return self.initial
        t = min(self.begin + (step - self.begin) // self.frequency * self.frequency, self.end)
        frac = (t - self.begin) / (self.end - self.begin)
        if frac in (0, 1):  # exactly initial and final, not within a rounding of them
            return self.initial if frac == 0 else self.final
        return self.final + (self.initial - self.final) * (1 - frac) ** self.power

    def __repr__(self):
        return (f"PolynomialSparsity(final={self.final}, initial={self.initial}, "
                f"begin_step={self.begin}, end_step={self.end}, frequency={self.frequency}, "
                f"power={self.power})")


def fit(trainer, x, y, schedule, epochs=1, scope="global", every=None, **fit_kwargs):
    """Train with `trainer` (a Trainer of a pruned model's compiled step) for `epochs`, setting
    the masks to ``schedule(step)`` (step: the module's steps so far) before every epoch, and
    also after every `every` steps when given; a mask change is a buffer write, no recompile.
    Returns the trainer's history, each record with the ``sparsity`` it ended the epoch at.
    Other keywords go to ``trainer.fit``."""
    if not callable(schedule):
        raise TypeError(f"pruning.fit: schedule must be callable (step -> target sparsity), e.g. "
                        f"PolynomialSparsity(0.8, end_step=1000); for a fixed sparsity "
                        f"`lambda step: 0.5`; got {schedule!r}")
    if not is_whole(epochs, least=0):
        raise ValueError(f"pruning.fit: epochs must be an int >= 0, got {epochs!r}")
    if every is not None and not is_whole(every, least=1):
        raise ValueError(f"pruning.fit: every must be a positive number of steps, got {every!r}")
    module = trainer.module
    achieved = [None]

    def on_step(m):
        if m.step_count % every == 0:
            achieved[0] = update_masks(m, schedule(m.step_count), scope)

    for _ in range(epochs):
        achieved[0] = update_masks(module, schedule(module.step_count), scope)
        trainer.fit(x, y, epochs=1, on_step=on_step if every else None, **fit_kwargs)
        trainer.history[-1]["sparsity"] = achieved[0]
    return trainer.history
