"""Pooling gradients read dy inside its bounds: dy placed at the very end of a mapping, a
PROT_NONE page after it, and handed to the scheduled gradient kernel without a copy
(DLPack). The gather had read windows at clamped indices under a select, whose clamps TVM's
simplifier dropped: max-pool and avg-pool k3 s2 p1 at 28x28 read row 14 of dy's 14 and
faulted here (a silent read past the end with ordinary allocations)."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent('''
    import ctypes, sys
    import numpy as np
    from tvmfront import ops
    from tvmfront._tvm import te, tvm
    from tvmfront.schedule import schedule_prim_func
    from tvmfront.target import resolve_target

    kind, shape, kernel, stride, padding, target = sys.argv[1:]
    op = ops.max_pool2d if kind == "max" else ops.avg_pool2d
    shape = tuple(int(v) for v in shape.split(","))
    attrs = dict(kernel=int(kernel), stride=int(stride), padding=int(padding))
    x = te.placeholder(shape, "float32", name="x")
    y = op.te_forward(x, **attrs)
    dy = te.placeholder(y.shape, "float32", name="dy")
    dx = op.te_grad(dy, x, derived=False, **attrs)[0]
    func, rule = schedule_prim_func(te.create_prim_func([dy, x, dx]), resolve_target(target))
    lib = tvm.compile(func, target=resolve_target("x86"))
    dy_shape = tuple(int(d) for d in y.shape)
    nbytes = int(np.prod(dy_shape)) * 4
    libc = ctypes.CDLL(None)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    pages = (nbytes + 4095) // 4096 + 1
    base = libc.mmap(None, pages * 4096, 3, 0x22, -1, 0)  # PROT_READ|WRITE, PRIVATE|ANON
    assert libc.mprotect(base + (pages - 1) * 4096, 4096, 0) == 0  # the page after dy
    start = base + (pages - 1) * 4096 - nbytes
    assert start % 64 == 0, "dy's size must keep it 64-byte aligned"
    raw = (ctypes.c_float * (nbytes // 4)).from_address(start)
    dy_np = np.frombuffer(raw, dtype=np.float32).reshape(dy_shape)
    rng = np.random.default_rng(0)
    dy_np[:] = rng.standard_normal(dy_shape)
    x_np = rng.integers(0, 4, shape).astype(np.float32)  # ties
    out = tvm.runtime.empty(shape, "float32", tvm.cpu())
    lib["main"](tvm.runtime.from_dlpack(dy_np), tvm.runtime.tensor(x_np), out)
    want = op.vjp(dy_np.astype(np.float64), x_np.astype(np.float64), **attrs)[0]
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, atol=1e-6, err_msg=rule)
    print("ok", rule)
''')


@pytest.mark.parametrize("target", ["x86", "x86:avx2"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ("2,4,28,28", 3, 2, 1),   # overlapping windows, padded: a window past each edge
    ("2,4,32,32", 3, 2, 1),   # rows of windows filling whole vectors
    ("2,8,9,9", 3, 3, 1),     # windows that do not overlap, padded
    ("1,2,9,33", 2, 2, 0),    # odd sizes: the last row and column in no window
])
def test_pool_gradient_reads_dy_in_bounds(kind, shape, kernel, stride, padding, target):
    out = subprocess.run([sys.executable, "-c", _SCRIPT, kind, shape, str(kernel), str(stride),
                          str(padding), target], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    assert out.stdout.strip().splitlines()[-1].startswith("ok"), out.stdout
