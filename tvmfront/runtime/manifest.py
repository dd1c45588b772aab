"""The bundle manifest's schema, checked before anything in a manifest is used.

A manifest says which files to read and which native library to load, so it is validated as
a whole first: every key known and of its type, file names plain names inside the bundle, the
files a module needs all listed and nothing else. A key a new tvmfront version adds goes into
FIELDS (and, if it changes how a bundle is read, FORMAT_VERSION goes up).
"""

import re

from ..errors import BundleError
from .scalars import fits_float, is_rate

FORMAT = "tvmfront-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
LIBRARY = "module.so"
PARAMS = "params.safetensors"
OPTIMIZER = "optimizer.safetensors"
# The files each kind of module consists of: exactly these are listed, hashed and read.
FILES = {"inference": (LIBRARY, PARAMS), "training": (LIBRARY, PARAMS, OPTIMIZER)}

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FEATURE = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _str(v):
    return isinstance(v, str)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
_EXPRESSION = re.compile(r"[A-Za-z_(][A-Za-z0-9_ +*/%()-]{0,199}")


def _dimension(d, symbolic, least=0):
    """An int >= least; a symbolic dimension's name ("batch") where `symbolic` is "name"; also
    an expression of names ("batch * seq", an output's) where it is "expression"."""
    if _is_int(d):
        return d >= least
    pattern = {"name": _NAME, "expression": _EXPRESSION}.get(symbolic)
    return pattern is not None and _str(d) and pattern.fullmatch(d) is not None


# the dtypes a compiled module's tensors have: another name ("float99") is a damaged manifest
DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                    "uint64", "float16", "bfloat16", "float32", "float64"})
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


def _tensor(v, named=False, symbolic=None, least=0):
    want = {"shape", "dtype", "name"} if named else {"shape", "dtype"}
    return (isinstance(v, dict) and set(v) == want and v["dtype"] in DTYPES
            and isinstance(v["shape"], list)
            and all(_dimension(d, symbolic, least) for d in v["shape"])
            and (not named or _str(v["name"]) and v["name"] != ""))


def _tensors(v, symbolic=None, least=0):
    return (isinstance(v, list)
            and all(_tensor(t, named=True, symbolic=symbolic, least=least) for t in v)
            and len({t["name"] for t in v}) == len(v))


def _data(v):
    """An input's or label's spec: a dimension may be a symbolic name; a number is >= 1, as
    compile requires (a batch of 0 made predict's batching loop step by 0)."""
    return _tensor(v, symbolic="name", least=1)


def _inputs(v):
    """Named inputs' specs (several inputs, a method's, the loss's extras)."""
    return _tensors(v, symbolic="name", least=1)


def _output(v):
    """An output's spec: a dimension may be an expression of symbolic names."""
    return _tensor(v, symbolic="expression")


def _methods(v):
    return isinstance(v, dict) and all(
        _str(name) and name.isidentifier() and isinstance(m, dict)
        and {"inputs", "outputs"} <= set(m) <= {"inputs", "outputs", *_BOUNDS}
        and _inputs(m["inputs"])
        and (_output(m["outputs"]) or isinstance(m["outputs"], list)
             and all(_output(o) for o in m["outputs"]))
        and all(check(m.get(kind, {})) for kind, (check, _) in _BOUNDS.items())
        for name, m in v.items())


def _counts(least):
    """{a symbolic dimension's or an input's name: an int >= least}."""
    return lambda v: isinstance(v, dict) and all(_str(k) and _is_int(n) and n >= least
                                                 for k, n in v.items())


# What calls of a compiled function must satisfy (tvmfront.tensor.BOUND_KINDS): a method
# carries each kind as {key: n}; the manifest's top level as {"predict", "step": {key: n}}.
_BOUNDS = {
    "min_sizes": (_counts(1), "{dimension: the fewest positions its int indices need}"),
    "max_sizes": (_counts(0), "{dimension: the most positions its tables have rows for}"),
    "id_ranges": (_counts(1), "{input: n, its values index n rows: each in [0, n)}"),
}


def _per_function(check):
    return lambda v: isinstance(v, dict) and set(v) <= {"predict", "step"} and all(
        check(b) for b in v.values())


def _optimizer(v):
    return (isinstance(v, dict) and set(v) == {"name", "lr", "hyperparameters", "state"}
            and _str(v["name"]) and is_rate(v["lr"]) and isinstance(v["hyperparameters"], dict)
            and _tensors(v["state"]))


def _features(v):
    return isinstance(v, list) and all(_str(f) and _FEATURE.fullmatch(f) for f in v)


# key -> (check, what it must be, required for: a set of kinds)
_BOTH, _TRAINING = frozenset(FILES), frozenset({"training"})
FIELDS = {
    "format": (lambda v: v == FORMAT, f"'{FORMAT}'", _BOTH),
    "format_version": (_is_int, "an integer", _BOTH),
    "kind": (lambda v: v in FILES, f"one of {sorted(FILES)}", _BOTH),
    "files": (lambda v: isinstance(v, dict), "an object {file name: sha256}", _BOTH),
    "tvmfront_version": (_str, "a string", _BOTH),
    "tvm_version": (_str, "a string", _BOTH),
    "target": (lambda v: isinstance(v, dict), "a TVM target object", _BOTH),
    "target_kind": (_str, "a string", _BOTH),
    "target_key": (_str, "a string", _BOTH),
    "target_arch": (_str, "a string", _BOTH),
    "cpu_features": (_features, "a list of CPU feature names", frozenset()),
    "inputs": (lambda v: _data(v) or _inputs(v) and len(v) > 1,
               "{shape, dtype} (each size a name or >= 1), or a list of {name, shape, dtype} "
               "for several inputs", _BOTH),
    "outputs": (_output, "{shape, dtype}", _BOTH),
    "parameters": (_tensors, "a list of {name, shape, dtype} with distinct names", _BOTH),
    "scalar_dtype": (lambda v: v in FLOAT_DTYPES, f"one of {sorted(FLOAT_DTYPES)}", _BOTH),
    "labels": (_data, "{shape, dtype}", _TRAINING),
    "extras": (_inputs, "a list of {name, shape, dtype} (the loss's extra inputs)",
               frozenset()),
    "buffers": (_tensors, "a list of {name, shape, dtype} with distinct names", frozenset()),
    "ignore_index": (_is_int, "an integer (the label CrossEntropyLoss ignores)", frozenset()),
    "label_smoothing": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                        and 0 <= v <= 1, "a number in [0, 1] (CrossEntropyLoss's)", frozenset()),
    "loss": (_str, "a string", _TRAINING),
    "num_classes": (lambda v: _is_int(v) and v > 0, "a positive integer", frozenset()),
    "optimizer": (_optimizer, "{name, lr (a finite number >= 0), hyperparameters, state: "
                  "[{name, shape, dtype}]}", _TRAINING),
    "step": (lambda v: _is_int(v) and v >= 0, "a non-negative integer", _TRAINING),
    "accumulate": (lambda v: isinstance(v, bool), "true or false", frozenset()),
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**64, "an integer in [0, 2**64)", frozenset()),
    "methods": (_methods, "{method name: {inputs: [{name, shape, dtype}], outputs: {shape, "
                "dtype} or a list of them, and optionally min_sizes, max_sizes and id_ranges: "
                "{name: int}}}", frozenset()),
    **{kind: (_per_function(check), "{predict, step: " + what + "}", frozenset())
       for kind, (check, what) in _BOUNDS.items()},
    "predict_one_batch": (_str, "a string (why predict runs its samples as one batch)",
                          frozenset()),
    "aliases": (lambda v: isinstance(v, dict) and all(_str(k) and _str(n) for k, n in v.items()),
                "{other name: parameter or buffer name} (tied weights)", frozenset()),
    "frozen": (lambda v: isinstance(v, list) and all(_str(n) for n in v),
               "a list of parameter names (requires_grad=False)", frozenset()),
    # tvf.quantize: the layers run as int8 kernels, and those kept in float (no int8 kernel)
    "quantization": (lambda v: isinstance(v, dict) and set(v) == {"int8", "float"}
                     and all(_str(n) for n in v["int8"])
                     and all(isinstance(f, list) and len(f) == 2 and all(map(_str, f))
                             for f in v["float"]),
                     "{int8: [layer names], float: [[layer name, layer kind]]}", frozenset()),
}
_ONLY_TRAINING = {"labels", "loss", "num_classes", "optimizer", "step", "extras", "seed",
                  "accumulate", "ignore_index", "label_smoothing"}


def check_file_name(name, where):
    """`name` if it is a plain file name inside the bundle directory, else BundleError."""
    if (not isinstance(name, str) or name in ("", ".", "..") or name.startswith(".")
            or "/" in name or "\\" in name or "\0" in name):
        raise BundleError(f"{where}: file name {name!r} is not a plain file name in the bundle "
                          "(no directories, no '..', no absolute or hidden paths)")
    return name


def _check_agreement(manifest, where):
    """BundleError where two fields disagree: the class count CrossEntropyLoss's label check
    uses and the logits' last axis (a larger one let labels index past the classes), a
    learning rate the step's scalar dtype cannot hold (inf there: every parameter inf after
    one step)."""
    classes, out = manifest.get("num_classes"), manifest["outputs"]["shape"]
    if classes is not None and out and isinstance(out[-1], int) and out[-1] != classes:
        raise BundleError(f"{where}: manifest 'num_classes' is {classes}, but the outputs "
                          f"have {out[-1]} classes (shape {out})")
    lr = manifest.get("optimizer", {}).get("lr")
    if lr is not None and not fits_float(lr, manifest["scalar_dtype"]):
        raise BundleError(f"{where}: manifest optimizer lr {lr} does not fit the step's "
                          f"{manifest['scalar_dtype']} scalars")


def validate(manifest, where):
    """Raise BundleError naming the first problem unless `manifest` is a well-formed bundle
    manifest of this format version; returns it."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: the manifest is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{where}: not a tvmfront bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{where}: bundle format version {manifest.get('format_version')!r}, "
                          f"this tvmfront reads version {FORMAT_VERSION}")
    kind = manifest.get("kind")
    if kind not in FILES:
        raise BundleError(f"{where}: unknown module kind {kind!r}; expected one of "
                          f"{sorted(FILES)}")
    allowed = set(FIELDS) - (set() if kind == "training" else _ONLY_TRAINING)
    unknown = sorted(set(manifest) - allowed)
    if unknown:
        raise BundleError(f"{where}: unknown manifest keys {unknown} (kind {kind!r})")
    missing = sorted(k for k, (_, _, need) in FIELDS.items() if kind in need and k not in manifest)
    if missing:
        raise BundleError(f"{where}: the manifest lacks {missing}")
    for key, value in manifest.items():
        check, what, _ = FIELDS[key]
        if not check(value):
            raise BundleError(f"{where}: manifest '{key}' must be {what}, got {value!r:.200}")
    _check_agreement(manifest, where)
    files = manifest["files"]
    for name, digest in files.items():
        check_file_name(name, where)
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise BundleError(f"{where}: the hash of {name} is not a SHA-256 hex digest")
    want = set(FILES[kind])
    if set(files) != want:
        raise BundleError(f"{where}: a {kind} bundle lists exactly {sorted(want)}; this one "
                          f"lacks {sorted(want - set(files))} and has unknown files "
                          f"{sorted(set(files) - want)}")
    return manifest
