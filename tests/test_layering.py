"""The package is layered: a module imports only from its own layer or those below it."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "tvmfront"

# module (dotted, relative to tvmfront) -> layer; the longest dotted prefix decides. Lower
# layers never import higher ones. Within level 5, tuning's record files, policy and the
# symbolic records' replay (5.0, 5.1) sit under build (5.2), which applies records, and the
# rest of tuning (5.3) builds.
LAYERS = {
    "_tvm": 0, "_files": 0, "_checks": 0, "_version": 0, "errors": 0, "config": 0, "data": 0, "target": 0,
    "spec": 1, "tensor": 1, "tir_walk": 1, "index_division": 1, "extremum": 1, "long_sums": 1,
    "autodiff": 2, "boundcheck": 2, "op": 2, "ops": 2, "gradcheck": 2, "opcheck": 2,
    "nn": 3, "optim": 3,
    "graph": 4, "pipeline": 4, "debug": 4, "unread_inputs": 4, "prepack": 4,
    "merge_elementwise": 4,
    "schedule": 5, "cache": 5, "denormals": 5,
    "tuning.store": 5, "tuning.merge": 5, "tuning.remote": 5, "rpc": 5,
    "tuning.policy": 5.1, "records": 5.1, "tuning.symbolic": 5.1,
    "build": 5.2, "split_build": 5.2,
    "tuning": 5.3,
    "runtime": 6,
    # tuning.verify rebuilds whole runtime modules with and without records (for the CLI)
    "compile": 7, "tuning.verify": 7, "ptq": 7, "generate": 7, "trainer": 7, "distributed": 7, "checkpoint": 7, "cli": 7,
    "__init__": 7,
    "testing": 8,  # starts trackers, servers, qemu: apart from the library, nothing imports it
}
RUNTIME_MAY_IMPORT = {"_tvm", "_files", "errors", "runtime"}  # a bundle loads without the frontend


def _layer_of(parts):
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise KeyError(".".join(parts))


def _imports(path):
    rel = path.relative_to(PKG).with_suffix("").parts
    package = rel[:-1] if rel[-1] != "__init__" else rel[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = list(package[: len(package) - (node.level - 1)])
            target = base + (node.module.split(".") if node.module else [])
            if target and (PKG.joinpath(*target).is_dir()):
                for alias in node.names:  # "from .tuning import policy": the submodule
                    sub = PKG.joinpath(*target, alias.name)
                    is_module = sub.is_dir() or sub.with_suffix(".py").exists()
                    yield tuple(target + [alias.name]) if is_module else tuple(target), node.lineno
            elif target:
                yield tuple(target), node.lineno
            else:  # "from . import x, y"
                for alias in node.names:
                    yield (alias.name,), node.lineno
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                if name and name.split(".")[0] == "tvmfront":
                    yield tuple(name.split(".")[1:]) or ("__init__",), node.lineno
                if name and name.split(".")[0] in ("tvm", "tvm_ffi"):
                    yield ("<tvm>", name), node.lineno


MODULES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_upward_imports(path):
    rel = path.relative_to(PKG).with_suffix("").parts
    if rel[-1] == "__init__" and len(rel) > 1:
        rel = rel[:-1]  # a package's __init__ is the package
    own = _layer_of(rel)
    for target, line in _imports(path):
        if target[0] == "<tvm>":
            # Only the adapter (and lazily, GPU scheduling in build) touch TVM directly.
            assert rel[0] in ("_tvm", "build"), f"{path.name}:{line} imports {target[1]} directly"
            continue
        assert _layer_of(target) <= own, f"{'.'.join(rel)}:{line} imports upward: {'.'.join(target)}"
        if rel[0] == "runtime":
            assert target[0] in RUNTIME_MAY_IMPORT, f"runtime imports frontend module {target}"


def test_every_module_has_a_layer():
    for path in MODULES:
        top = path.relative_to(PKG).parts[0].removesuffix(".py")
        assert top in LAYERS, f"{top} has no layer in tests/test_layering.py"


def test_the_schedule_files_import_in_their_listed_order():
    """tvmfront/schedule/: a file imports only the files listed before it in the package's
    FILES (shared analysis first, the kernel families, the dispatch last), so the package has
    no import cycle and a new family's file has an obvious place."""
    from tvmfront import schedule

    order = [m.__name__.rpartition(".")[2] for m in schedule.FILES]
    files = sorted(p.stem for p in (PKG / "schedule").glob("*.py") if p.stem != "__init__")
    assert sorted(order) == files, "every file of tvmfront/schedule/ is listed in FILES"
    for name in order:
        for target, line in _imports(PKG / "schedule" / f"{name}.py"):
            if target[0] == "schedule":
                assert order.index(target[1]) < order.index(name), \
                    f"schedule/{name}.py:{line} imports schedule.{target[1]}, listed after it"
