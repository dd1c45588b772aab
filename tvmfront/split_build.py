"""Compile a scheduled module's kernels on every core.

TVM builds every kernel of a module into one LLVM module and generates its machine code on one
thread: most of a cold compile. Here the kernels (the "side" kernels) are built by
tvm.tirx.build in chunks, each into an object file of its own, by a thread per core, while
tvm.compile builds the Relax VM code; the export links all objects into one library. TVM's
calls release the GIL, so the threads run on every core.

The Relax functions call a side kernel by name (call_dps_packed instead of call_tir): the VM
resolves both kinds the same way, by the kernel's symbol in the loaded library. So the
in-memory executable lacks the side kernels: only the exported library is complete.
"""

import os
import threading

from ._tvm import (PyExprMutator, lazy, mutator, prim_func_type, relax, relax_call_tir_op,
                   tvm)

_cc = lazy("tvm.support.cc")


def create_shared(*args, **kwargs):
    return _cc.create_shared(*args, **kwargs)


@mutator
class _CallByName(PyExprMutator):
    """call_tir(kernel, args) -> call_dps_packed("kernel", args) for the side kernels."""

    def __init__(self, mod, side):
        super().__init__(mod)
        self.side = side

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if (call.op.same_as(relax_call_tir_op()) and len(call.args) == 2
                and isinstance(call.args[0], relax.GlobalVar)
                and call.args[0].name_hint in self.side):
            out = call.ty_args[0]
            out = list(out.fields) if isinstance(out, relax.TupleType) else out
            return relax.call_dps_packed(call.args[0].name_hint, call.args[1], out)
        return call


def _static_kernels(mod):
    """Names of the kernels that only call_tir without symbolic shape arguments calls (the
    ones call_dps_packed can call: it passes no tir_vars)."""
    called, symbolic = set(), set()

    def visit(expr):
        if (isinstance(expr, relax.Call) and expr.op.same_as(relax_call_tir_op())
                and isinstance(expr.args[0], relax.GlobalVar)):
            (symbolic if len(expr.args) > 2 else called).add(expr.args[0].name_hint)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return called - symbolic


CHUNK = 6  # kernels per tvm.tirx.build call of a side thread: small chunks balance the threads


def split(mod):
    """(main module, [side modules]): the side modules hold the static kernels but the first
    (which keeps an LLVM module in the main build, the one the export packs the VM code
    into), CHUNK to a module, each kernel exported under its name; the main module calls them
    by name. The list is empty when there is nothing to split."""
    kernels = sorted(gv.name_hint for gv, f in mod.functions.items()
                     if isinstance(f, prim_func_type()))
    static = _static_kernels(mod)
    side = [name for name in kernels[1:] if name in static]
    if not side:
        return mod, []
    main, funcs = _take_out(mod, side)
    # The build legalizes the Relax ops left in main (a reshape) into kernels named after
    # the op; one named as a side kernel would be a second definition of its symbol at the
    # link (a model's own `reshape` kernel: the build then fell back to one piece). Such side
    # kernels stay in main, where the names of the legalized ones are made unique.
    clash = _legalized_names(main) & set(side)
    if clash:
        side = [name for name in side if name not in clash]
        main, funcs = _take_out(mod, side)
    chunks = [tvm.IRModule(dict(funcs[name] for name in side[i:i + CHUNK]))
              for i in range(0, len(side), CHUNK)]
    return main, chunks


def _take_out(mod, side):
    """(mod without the `side` kernels, calling them by name; {name: (gvar, kernel)})."""
    rewriter = _CallByName(mod, set(side))
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    rewritten = rewriter.builder_.get()
    main, funcs = {}, {}
    for gvar, func in rewritten.functions.items():
        if gvar.name_hint in rewriter.side:
            funcs[gvar.name_hint] = (gvar, func.with_attr("global_symbol", gvar.name_hint))
        else:
            main[gvar] = func
    return tvm.IRModule(main, attrs=rewritten.attrs, global_infos=rewritten.global_infos), funcs


def _legalized_names(mod):
    """Names of the kernels relax.transform.LegalizeOps adds to `mod`."""
    before = {gv.name_hint for gv in mod.get_global_vars()}
    return {gv.name_hint for gv in relax.transform.LegalizeOps()(mod).get_global_vars()} - before


class SideBuild:
    """The side modules built by `threads` threads, each taking the next module left
    (tvm.tirx.build, then its object file written into `folder`): start(), then `link` as
    export_library's fcompile (it waits for the objects and links them in with the others;
    it re-raises what a side build raised). Modules can also be handed on while the threads
    run: add(module) for each, then close() (`modules` is then the first of them, or [])."""

    def __init__(self, modules, target, folder, pass_context, threads, pipeline="default"):
        self.target, self.folder, self.errors = target, folder, []
        self.pipeline = pipeline  # the TIR pipeline's name (build.kernel_tir_pipeline)
        self.todo, self.paths, self.closed = [], [], False
        self.ready = threading.Condition()
        self.pass_context = pass_context  # PassContext is per thread: the caller's is handed on
        self.threads = [threading.Thread(target=self._run, name=f"tvmfront-side-build-{i}",
                                         daemon=True) for i in range(max(1, threads))]
        for mod in modules:
            self.add(mod)
        if modules:
            self.close()

    def add(self, mod):
        """Build `mod` too (a thread takes it as soon as one is free)."""
        with self.ready:
            path = os.path.join(self.folder, f"side{len(self.paths)}.o")
            self.paths.append(path)
            self.todo.append((path, mod))
            self.ready.notify()

    def close(self):
        """No more modules: the threads end once the last is built."""
        with self.ready:
            self.closed = True
            self.ready.notify_all()

    def _next(self):
        with self.ready:
            while not (self.errors or self.todo or self.closed):
                self.ready.wait()
            return None if self.errors or not self.todo else self.todo.pop(0)

    def _run(self):
        try:
            with self.pass_context:
                while (job := self._next()) is not None:
                    path, mod = job
                    tvm.tirx.build(mod, target=self.target,
                                   pipeline=self.pipeline).write_to_file(path)
        except BaseException as err:  # noqa: BLE001 - handed to link()'s caller
            with self.ready:
                self.errors.append(err)
                self.ready.notify_all()

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def join(self):
        self.close()  # a caller that failed before closing must not leave the threads waiting
        for thread in self.threads:
            thread.join()

    def link(self, file_name, files, **kwargs):
        """export_library's fcompile: tvm.support.cc.create_shared with the side objects."""
        self.join()
        if self.errors:
            raise self.errors[0]
        return create_shared(file_name, list(files) + self.paths, **kwargs)
