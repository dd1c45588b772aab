"""Parameter groups: per-parameter optimizer settings chosen by name patterns.

    groups=[{"params": ["*.bias", "*norm*"], "weight_decay": 0.0},
            {"params": ["head.*"], "lr_scale": 0.1}]

Each parameter takes the settings of the first group with a pattern (fnmatch, or an exact
name) that matches it; a parameter no group matches, and every setting a group leaves out,
keep the optimizer's own. A pattern that matches no parameter not already taken by an
earlier group is an error: a misspelt name never silently trains with the wrong settings.
"""

import fnmatch
import math
import numbers


def check_setting(where, key, value):
    """ValueError naming `key` unless `value` is a finite number >= 0: a group's setting, and
    an optimizer's hyperparameters (optimizers.py; PyTorch refuses the same)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{where}: {key} must be a finite number >= 0, got {value!r}")


class ParamGroups:
    """Validated groups plus the optimizer's defaults for each setting a group may change."""

    def __init__(self, optimizer, groups, **defaults):
        self.optimizer, self.defaults = optimizer, dict(defaults)
        self.groups = []
        if groups is None:
            return
        if not isinstance(groups, (list, tuple)):
            raise TypeError(f"{optimizer}: groups must be a list of dicts, got "
                            f"{type(groups).__name__}")
        for i, group in enumerate(groups):
            where = f"{optimizer}: group {i}"
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"{where} must be a dict with 'params' (names or patterns), "
                                f"got {group!r}")
            unknown = sorted(set(group) - {"params"} - set(defaults))
            if unknown:
                raise TypeError(f"{where}: unknown settings {unknown}; a group may set "
                                f"{sorted(defaults)}")
            patterns = [group["params"]] if isinstance(group["params"], str) else group["params"]
            if (not isinstance(patterns, (list, tuple)) or not patterns
                    or not all(isinstance(p, str) and p for p in patterns)):
                raise TypeError(f"{where}: 'params' must be a name or pattern, or a non-empty "
                                f"list of them, got {group['params']!r}")
            settings = {}
            for key, value in group.items():
                if key != "params":
                    check_setting(where, key, value)
                    settings[key] = float(value)
            self.groups.append((list(patterns), settings))

    def check(self, names):
        """Raise ValueError unless every pattern matches a parameter in `names` (the trained
        ones) that no earlier group took."""
        taken = set()
        for i, (patterns, _) in enumerate(self.groups):
            mine = set()
            for pattern in patterns:
                hits = {n for n in names if fnmatch.fnmatchcase(n, pattern)} - taken
                if not hits:
                    raise ValueError(
                        f"{self.optimizer}: group {i} names {pattern!r}, which matches no "
                        f"trained parameter{' not taken by an earlier group' if taken else ''}"
                        f"; the trained parameters are {sorted(names)}")
                mine |= hits
            taken |= mine

    def group_of(self, name):
        """Index of the first group matching `name`, or None (the optimizer's defaults)."""
        for i, (patterns, _) in enumerate(self.groups):
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                return i
        return None

    def setting(self, key):
        """`key`'s value as a function of the parameter name."""

        def value(name):
            i = self.group_of(name)
            return self.groups[i][1].get(key, self.defaults[key]) if i is not None \
                else self.defaults[key]

        return value

    def uses(self, key):
        """Whether any parameter can get a non-zero `key`."""
        return bool(self.defaults[key]) or any(s.get(key) for _, s in self.groups)

    def to_json(self):
        return [dict(params=patterns, **settings) for patterns, settings in self.groups]
