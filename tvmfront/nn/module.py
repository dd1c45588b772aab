"""Module and Parameter: a named parameter tree, PyTorch-like."""

from collections import OrderedDict

import numpy as np

from ..errors import ShapeError
from ..tensor import current_trace


class Parameter:
    """A trainable array. Inside a trace it stands for the function input bound to it.

    ``requires_grad = False`` freezes it: the compiled step computes no gradient for it,
    keeps no optimizer state for it and returns it unchanged. Set it before compiling.
    One Parameter assigned to several modules (weight tying) is one parameter."""

    def __init__(self, data, requires_grad=True):
        self.data = np.array(data)  # a copy: the module owns its values
        self.requires_grad = bool(requires_grad)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return str(self.data.dtype)

    def __tvf_value__(self):
        trace = current_trace()
        return trace.lookup(self) if trace is not None else self.data

    def __repr__(self):
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.shape}, dtype={self.dtype}{frozen})"


class Module:
    """Base class of layers and models: assign Parameters and Modules as attributes."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               "before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

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
        out = [(prefix + name, p) for name, p in self._parameters.items()]
        for name, child in self._modules.items():
            out.extend(child.named_parameters(prefix + name + ".", remove_duplicate=False))
        if remove_duplicate:
            seen = set()
            out = [(n, p) for n, p in out if not (id(p) in seen or seen.add(id(p)))]
        return out

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def state_dict(self):
        """{name: array copy}, one entry per Parameter: a tied Parameter appears once, under
        its first name (PyTorch lists every name; a compiled module has one input per
        Parameter, so its state_dict and this one have the same keys)."""
        return OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters; shape and dtype must match, names too if strict.
        A tied Parameter may be given under any of its names (PyTorch's state_dict lists them
        all); given under several, the values must agree."""
        params = dict(self.named_parameters())
        aliases = dict(self.named_parameters(remove_duplicate=False))
        given = {id(aliases[n]) for n in state if n in aliases}
        missing = sorted(n for n, p in params.items() if id(p) not in given)
        unexpected = sorted(set(state) - set(aliases))
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
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
