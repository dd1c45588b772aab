"""ModuleList and ModuleDict: hold submodules under PyTorch's names, so that
`layers.0.linear1.weight` in a PyTorch state_dict is `layers.0.linear1.weight` here too.
Neither has a forward: the model that holds them decides how to call them."""

from collections import OrderedDict

from .._checks import is_whole
from .module import Module


def _check_module(owner, key, module):
    if not isinstance(module, Module):
        raise TypeError(f"{owner}: entry {key!r} is a {type(module).__name__}, not an "
                        "nn.Module")


def _put(owner, name, module):
    """Register `module` as child `name`; a replaced child keeps its place in the order
    (Module.__setattr__ would move it to the end, and the order is the parameter order)."""
    if name in owner._modules:
        owner._modules[name] = module
        object.__setattr__(owner, name, module)
    else:
        setattr(owner, name, module)


class ModuleList(Module):
    """A list of modules, registered as children '0', '1', ... (torch.nn.ModuleList).

    >>> blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
    >>> [n for n, _ in blocks.named_parameters()]
    ['0.weight', '0.bias', '1.weight', '1.bias']
    """

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _index(self, i):
        n = len(self)
        if not is_whole(i):
            raise TypeError(f"ModuleList indices must be integers or slices, not "
                            f"{type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"ModuleList index {i} out of range for {n} modules")
        return i % n

    def _renumber(self, modules):
        # Children are named by position: rebuild the names after an insertion or a deletion.
        self._modules.clear()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __getitem__(self, i):
        modules = list(self._modules.values())
        if isinstance(i, slice):
            return ModuleList(modules[i])
        return modules[self._index(i)]

    def __setitem__(self, i, module):
        i = self._index(i)
        _check_module("ModuleList", i, module)
        _put(self, str(i), module)

    def __delitem__(self, i):
        modules = list(self._modules.values())
        del modules[i if isinstance(i, slice) else self._index(i)]
        for name in list(self._modules):
            object.__delattr__(self, name)
        self._renumber(modules)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules.values()))

    def append(self, module):
        _check_module("ModuleList", len(self), module)
        setattr(self, str(len(self)), module)
        return self

    def extend(self, modules):
        if isinstance(modules, Module) and not isinstance(modules, ModuleList):
            raise TypeError("ModuleList.extend takes an iterable of modules, got a "
                            f"{type(modules).__name__}")
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        _check_module("ModuleList", index, module)
        modules = list(self._modules.values())
        modules.insert(index, module)
        self._renumber(modules)


class ModuleDict(Module):
    """An ordered dict of modules, each registered under its key (torch.nn.ModuleDict).
    Keys are non-empty strings without '.', and not the name of a Module attribute.

    >>> heads = nn.ModuleDict({"cls": nn.Linear(8, 3), "reg": nn.Linear(8, 1)})
    >>> heads["cls"]
    Linear(8, 3, bias=True)
    """

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def _check_key(self, key):
        if not isinstance(key, str):
            raise TypeError(f"ModuleDict keys must be strings, got {type(key).__name__}")
        if not key or "." in key:
            raise KeyError(f"ModuleDict key {key!r}: must be non-empty and contain no '.' "
                           "(it becomes part of parameter names)")
        if key not in self._modules and (hasattr(type(self), key) or key in self.__dict__):
            raise KeyError(f"ModuleDict key {key!r} clashes with an attribute of ModuleDict")

    def __getitem__(self, key):
        if key not in self._modules:
            raise KeyError(f"ModuleDict has no module {key!r} (keys: {list(self._modules)})")
        return self._modules[key]

    def __setitem__(self, key, module):
        self._check_key(key)
        _check_module("ModuleDict", key, module)
        _put(self, key, module)

    def __delitem__(self, key):
        self[key]  # noqa: B018  (KeyError naming the keys)
        del self._modules[key]
        object.__delattr__(self, key)

    def __contains__(self, key):
        return key in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules))

    def keys(self):
        return list(self._modules.keys())

    def values(self):
        return list(self._modules.values())

    def items(self):
        return list(self._modules.items())

    def pop(self, key):
        module = self[key]
        del self[key]
        return module

    def update(self, modules):
        """Add (or replace) entries from a mapping or from (key, module) pairs."""
        pairs = modules.items() if isinstance(modules, (dict, OrderedDict, ModuleDict)) \
            else modules
        for entry in pairs:
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise TypeError("ModuleDict.update takes a mapping or (key, module) pairs, got "
                                f"an entry {entry!r}")
            self[entry[0]] = entry[1]
