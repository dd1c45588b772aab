"""The schedule tests' shared steps: a TE kernel scheduled by the default CPU rules, and a
scheduled kernel run on numpy arrays."""

from tvmfront import schedule as cpu_schedule
from tvmfront._tvm import te, to_device, tvm
from tvmfront.target import resolve_target


def schedule(inputs, out, target="x86"):
    """(scheduled PrimFunc, its rule, the target) of the kernel computing `out` from `inputs`."""
    target = resolve_target(target)
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
    return func, rule, target


def run(func, target, args, shapes, dtype="float32"):
    """The kernel's outputs (of `dtype` and `shapes`) for the numpy arrays `args`."""
    lib = tvm.compile(func, target=target)
    outs = [tvm.runtime.empty(s, dtype, tvm.cpu()) for s in shapes]
    lib(*[to_device(a) for a in args], *outs)
    return [o.numpy() for o in outs]
