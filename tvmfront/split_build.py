"""Compile a scheduled module's kernels on two cores.

TVM builds every kernel of a module into one LLVM module and generates its machine code on one
thread: most of a cold compile. Here about half of the kernels (the "side" kernels) are built
by tvm.tirx.build into an object file of their own in a second thread, while tvm.compile
builds the Relax VM code and the other kernels; the export links both objects into one
library. TVM's calls release the GIL, so the two run on two cores.

The Relax functions call a side kernel by name (call_dps_packed instead of call_tir): the VM
resolves both kinds the same way, by the kernel's symbol in the loaded library. So the
in-memory executable lacks the side kernels: only the exported library is complete.
"""

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


def split(mod):
    """(main module, side module): the side module holds every other static kernel (by
    name), each exported under its name; the main module calls them by name. The side module
    is None when there is nothing to split."""
    kernels = sorted(gv.name_hint for gv, f in mod.functions.items()
                     if isinstance(f, prim_func_type()))
    static = _static_kernels(mod)
    side = set(name for name in kernels[1::2] if name in static)
    if not side:
        return mod, None
    rewriter = _CallByName(mod, side)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    rewritten = rewriter.builder_.get()
    main, kernels_side = {}, {}
    for gvar, func in rewritten.functions.items():
        if gvar.name_hint in side:
            kernels_side[gvar] = func.with_attr("global_symbol", gvar.name_hint)
        else:
            main[gvar] = func
    main_mod = tvm.IRModule(main, attrs=rewritten.attrs, global_infos=rewritten.global_infos)
    return main_mod, tvm.IRModule(kernels_side)


class SideBuild:
    """tvm.tirx.build of a side module and its object file written to `path`, in a thread:
    start(), then `link` as export_library's fcompile (it waits for the object and links it
    in with the others; it re-raises what the side build raised)."""

    def __init__(self, mod, target, path, pass_context):
        self.mod, self.target, self.path, self.error = mod, target, path, None
        self.pass_context = pass_context  # PassContext is per thread: the caller's is handed on
        self.thread = threading.Thread(target=self._run, name="tvmfront-side-build", daemon=True)

    def _run(self):
        try:
            with self.pass_context:
                tvm.tirx.build(self.mod, target=self.target).write_to_file(self.path)
        except BaseException as err:  # noqa: BLE001 - handed to link()'s caller
            self.error = err

    def start(self):
        self.thread.start()
        return self

    def link(self, file_name, files, **kwargs):
        """export_library's fcompile: tvm.support.cc.create_shared with the side object."""
        self.thread.join()
        if self.error is not None:
            raise self.error
        return create_shared(file_name, list(files) + [self.path], **kwargs)
