"""Module and Parameter: a named parameter tree, PyTorch-like."""

from collections import OrderedDict

import numpy as np

from .._checks import is_float_dtype
from ..errors import ShapeError
from ..tensor import Tensor, current_trace
from .init import float_dtype


class _State:
    """What Parameter and Buffer share: an owned numpy array that, inside a trace, stands for
    its current traced value."""

    def __init__(self, data):
        self.data = np.array(data)  # a copy: the module owns its values

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return str(self.data.dtype)

    def __tvf_value__(self):
        trace = current_trace()
        return trace.lookup(self) if trace is not None else self.data


class Parameter(_State):
    """A trainable array. Inside a trace it stands for the function input bound to it.

    ``requires_grad = False`` freezes it: the compiled step computes no gradient for it,
    keeps no optimizer state for it and returns it unchanged. Set it before compiling.
    One Parameter assigned to several modules (weight tying) is one parameter."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data)
        if not isinstance(requires_grad, (bool, np.bool_)):  # bool("no") is True
            raise TypeError(f"Parameter: requires_grad must be a bool, got {requires_grad!r}")
        self.requires_grad = bool(requires_grad)

    def __repr__(self):
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.shape}, dtype={self.dtype}{frozen})"


class Buffer(_State):
    """Non-trainable state (BatchNorm's running statistics): no gradient, no optimizer state,
    but in the state_dict, exported and carried through the compiled train step, which reads
    it and returns its new value. Inside a trace it stands for its current traced value."""

    def __repr__(self):
        return f"Buffer(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class of layers and models: assign Parameters and Modules as attributes,
    register non-trainable state with register_buffer. `training` (True after construction)
    is switched recursively by train() / eval(), as in PyTorch."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               "before assigning attributes")
        if name in self.__dict__.get("_buffers", {}) and not isinstance(value, Module) \
                and not isinstance(value, (Parameter, Buffer)) and value is not None:
            self._set_buffer(name, value)
            return
        if name in self._parameters and value is not None and \
                not isinstance(value, Parameter):
            # as PyTorch: an array here turned the parameter into a constant, left out of
            # state_dict and of training
            raise TypeError(f"cannot assign a {type(value).__name__} as parameter '{name}' "
                            "(a Parameter or None expected; to change its values, "
                            f"load_state_dict or assign Parameter(array))")
        if isinstance(value, Parameter) and name in self._parameters:
            self._parameters[name] = value  # in its place: state_dict keeps its order
            object.__setattr__(self, name, value)
            return
        self._parameters.pop(name, None)
        self._buffers.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        """Register non-trainable state `name` (e.g. running statistics) holding a copy of
        `array`. Assigning `self.name = value` later replaces its value: eagerly a numpy
        array (same shape and dtype), inside the compiled train step a Tensor, which becomes
        the buffer's value after the step."""
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"register_buffer: buffer name must be a non-empty string without "
                           f"'.', got {name!r}")
        if name in self._parameters or name in self._modules:
            raise KeyError(f"register_buffer: '{name}' is already a parameter or submodule")
        buf = Buffer(array)
        self._buffers[name] = buf
        object.__setattr__(self, name, buf)
        return buf

    def _set_buffer(self, name, value):
        buf = self._buffers[name]
        trace = current_trace()
        if isinstance(value, Tensor):
            if trace is None:
                raise RuntimeError(f"buffer '{name}': a symbolic Tensor assigned outside a trace")
            if value.shape != buf.shape or value.dtype != buf.dtype:
                raise ShapeError(f"buffer '{name}' has shape {buf.shape} dtype {buf.dtype}; the "
                                 f"value assigned has shape {value.shape} dtype {value.dtype}")
            trace.bindings[id(buf)] = value  # later reads, and the step's output, see it
            return
        value = np.asarray(value)
        if value.shape != buf.shape or value.dtype != buf.data.dtype:
            raise ShapeError(f"buffer '{name}' has shape {buf.shape} dtype {buf.dtype}; the value "
                             f"assigned has shape {value.shape} dtype {value.dtype}")
        buf.data = value.copy()

    def train(self, mode=True):
        """Set training mode on this module and every submodule (BatchNorm uses batch
        statistics and updates its running ones). Returns self."""
        object.__setattr__(self, "training", bool(mode))
        for child in self._modules.values():
            child.train(mode)
        return self

    def eval(self):
        """Evaluation mode (BatchNorm normalises with its running statistics); train(False)."""
        return self.train(False)

    def to(self, dtype):
        """Cast every float parameter and buffer to `dtype` (float16, float32 or float64), in
        place, and return self: PyTorch's module.to(dtype). Integer buffers (BatchNorm's
        num_batches_tracked) keep their dtype; a tied parameter stays one. Compile after it:
        a compiled module keeps the dtypes it was compiled with."""
        dtype = float_dtype(dtype, f"{type(self).__name__}.to")
        for _, state in self.named_parameters() + self.named_buffers():
            if is_float_dtype(state.data.dtype):
                state.data = state.data.astype(dtype)
        return self

    def half(self):
        """to('float16')"""
        return self.to("float16")

    def float(self):
        """to('float32')"""
        return self.to("float32")

    def double(self):
        """to('float64')"""
        return self.to("float64")

    def modules(self):
        """This module and every submodule, depth first (a shared one once)."""
        return [m for _, m in self.named_modules()]

    def named_modules(self, prefix="", remove_duplicate=True):
        """[(dotted name, module)]: this module (named `prefix`, "" by default), then every
        submodule, depth first, as in PyTorch. A module reached by several paths (used twice)
        is listed once, under its first name, unless remove_duplicate=False."""
        out, seen = [], set()

        def walk(m, name):
            if remove_duplicate:
                if id(m) in seen:
                    return
                seen.add(id(m))
            out.append((name, m))
            for n, c in m._modules.items():
                walk(c, f"{name}.{n}" if name else n)

        walk(self, prefix)
        return out

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} defines no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def named_children(self):
        return list(self._modules.items())

    def named_parameters(self, prefix="", remove_duplicate=True):
        """[(dotted name, Parameter)] in registration order, depth first. A Parameter reached
        by several paths (tied weights, a module used twice) is listed once, under the first
        name, as in PyTorch; remove_duplicate=False lists every path."""
        return self._named("_parameters", prefix, remove_duplicate)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix="", remove_duplicate=True):
        """[(dotted name, Buffer)], as named_parameters (PyTorch names: 'bn.running_mean')."""
        return self._named("_buffers", prefix, remove_duplicate)

    def _named(self, table, prefix, remove_duplicate):
        """[(dotted name, entry)] of the `table` dict ('_parameters' or '_buffers') of this
        module and its children, depth first; each object once unless remove_duplicate=False."""
        out = [(prefix + name, t) for name, t in getattr(self, table).items()]
        for name, child in self._modules.items():
            out.extend(child._named(table, prefix + name + ".", remove_duplicate=False))
        if remove_duplicate:
            seen = set()
            out = [(n, t) for n, t in out if not (id(t) in seen or seen.add(id(t)))]
        return out

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def state_dict(self):
        """{name: array copy}: every Parameter, then every buffer. A tied Parameter appears
        once, under its first name (PyTorch lists every name; a compiled module has one input
        per Parameter, so its state_dict and this one have the same keys)."""
        return OrderedDict((name, t.data.copy()) for name, t in
                           self.named_parameters() + self.named_buffers())

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters; shape and dtype must match, names too if strict.
        A tied Parameter may be given under any of its names (PyTorch's state_dict lists them
        all); given under several, the values must agree."""
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise TypeError(f"load_state_dict: expected a dict-like state_dict (name -> array), "
                            f"got {type(state).__name__}")
        params = dict(self.named_parameters() + self.named_buffers())
        aliases = dict(self.named_parameters(remove_duplicate=False)
                       + self.named_buffers(remove_duplicate=False))
        given = {id(aliases[n]) for n in state if n in aliases}
        missing = sorted(n for n, p in params.items() if id(p) not in given)
        unexpected = sorted(set(state) - set(aliases))
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: {describe_missing(missing, params)}"
                           f"unexpected {unexpected}")
        loaded = {}
        for name, value in state.items():
            if name not in aliases:
                continue
            value = np.asarray(value)
            p = aliases[name]
            if id(p) in loaded and not np.array_equal(loaded[id(p)], value):
                first = next(n for n, q in params.items() if q is p)
                raise ShapeError(f"load_state_dict: '{name}' is tied to '{first}' but the two "
                                 "entries hold different values")
            loaded[id(p)] = value
            if value.shape != p.data.shape or value.dtype != p.data.dtype:
                raise ShapeError(f"load_state_dict: '{name}' expects shape {p.data.shape} dtype "
                                 f"{p.data.dtype}, got shape {value.shape} dtype {value.dtype}")
            p.data = value.copy()

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        body = "\n".join(f"  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._modules.items())
        return f"{type(self).__name__}(\n{body}\n)"

    def extra_repr(self):
        return ""


def describe_missing(missing, tensors):
    """'missing parameters [...], missing buffers [...], ' for a load_state_dict error."""
    kinds = {"parameters": [n for n in missing if isinstance(tensors[n], Parameter)],
             "buffers": [n for n in missing if not isinstance(tensors[n], Parameter)]}
    return "".join(f"missing {k} {v}, " for k, v in kinds.items() if v) or "missing [], "
