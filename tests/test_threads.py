"""A compiled module called from several Python threads at once (a thread-pool server) gives
each call its right answer: the module serializes its calls (runtime.modules._serialized).
Without that, the threads shared one Relax VM and the fast paths' input tensors: a TVM
InternalError, a type mismatch inside the VM, or a segfault, in about one run of three."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_one_module_called_from_several_threads():
    for _ in range(2):  # the race showed in about one run of three
        run = subprocess.run([sys.executable, os.path.join(HERE, "_threads_worker.py")],
                             capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, TVM_NUM_THREADS="1"))
        assert run.returncode == 0, run.stderr[-2000:]  # -11: a segfault
        assert "problems: none" in run.stdout, run.stdout[-2000:]
