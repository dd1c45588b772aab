"""Local TVM RPC trackers and servers: tests, and trying remote tuning out on loopback.

    with start_tracker() as tracker, start_server(tracker=tracker, key="fleet"):
        tvf.tune(module, rpc=f"{tracker.address}/fleet")

``start_server(aarch64=True)`` runs the aarch64 server under qemu (tvmfront.testing.qemu).
Each is a process group of its own; stop() (or leaving the with block) ends the group.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from .._tvm import rpc_connect_tracker
from ..tuning.remote import parse
from . import qemu

def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalProcess:
    """A tracker or server started here, in its own process group; stop() ends the group.
    ``log`` is the file its output goes to; ``address`` is host:port."""

    def __init__(self, cmd, host, port, log, env=None, name="process"):
        self.host, self.port, self.log, self.name = host, port, log, name
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env,
                                     start_new_session=True)

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def output(self):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_ready(self, ready, timeout):
        """Poll ready() until it is true; RuntimeError with the log's tail after `timeout`
        seconds or if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n"
                                   f"{self.output()[-3000:]}")
            with contextlib.suppress(Exception):
                if ready():
                    return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:g} s:\n{self.output()[-3000:]}")

    def stop(self):
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:  # its children (the session workers) may outlive it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _log_file(what):
    fd, path = tempfile.mkstemp(prefix=f"tvmfront-{what}-", suffix=".log")
    os.close(fd)
    return path


def _tcp_open(host, port):
    socket.create_connection((host, port), timeout=1).close()
    return True


def start_tracker(host="127.0.0.1", port=None, log=None, timeout=60):
    """A TVM RPC tracker on host:port (a free port by default), ready to take servers."""
    port = port or free_port(host)
    log = log or _log_file("tracker")
    cmd = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
           "--port-end", str(port + 1)]
    proc = LocalProcess(cmd, host, port, log, name=f"RPC tracker {host}:{port}")
    return proc.wait_ready(lambda: _tcp_open(host, port), timeout)


def start_server(host="127.0.0.1", port=None, tracker=None, key=None, aarch64=False, log=None,
                 timeout=None):
    """A TVM RPC server (``python -m tvm.exec.rpc_server``) on host:port, registered with
    `tracker` ("host:port" or a LocalProcess) under `key` when given; ready when it listens
    (and the tracker lists it). aarch64=True runs the aarch64 Python and TVM under qemu
    (tvmfront.testing.qemu; ~1 min to start, two emulated TVM imports)."""
    port = port or free_port(host)
    log = log or _log_file("server")
    args = ["-m", "tvm.exec.rpc_server", "--host", host, "--port", str(port),
            "--port-end", str(port + 1)]
    if tracker is not None:
        tracker = tracker.address if isinstance(tracker, LocalProcess) else tracker
        if not key:
            raise ValueError("a server registered with a tracker needs a key")
        args += ["--tracker", tracker, "--key", key]
    if aarch64:
        cmd, env = _qemu_python(args)
        timeout = timeout or 300
    else:
        cmd, env = [sys.executable, *args], None
        timeout = timeout or 60
    name = f"RPC server {host}:{port}" + (" (aarch64, qemu)" if aarch64 else "")
    proc = LocalProcess(cmd, host, port, log, env=env, name=name)
    if tracker is None:
        return proc.wait_ready(lambda: _tcp_open(host, port), timeout)
    remote = parse(f"{tracker}/{key}")

    def registered():
        summary = rpc_connect_tracker(remote.host, remote.port).summary()
        return any(tuple(info["addr"])[1] == port and info["key"] == f"server:{key}"
                   for info in summary.get("server_info", []))

    return proc.wait_ready(registered, timeout)


# The emulated server: TVM's RPC server runs its listen loop in a subprocess started from
# sys.executable, and without binfmt_misc an emulated process cannot exec an aarch64 binary.
# sys.executable becomes a script that starts the aarch64 Python under qemu. TVM's server also
# needs cloudpickle (pure Python): this machine's copy is put on the aarch64 path.
_SITECUSTOMIZE = """import os, sys
if os.environ.get("TVMFRONT_QEMU_EXECUTABLE"):
    sys.executable = os.environ["TVMFRONT_QEMU_EXECUTABLE"]
"""


def _qemu_python(args):
    env = qemu.arm_env()  # ArmUnavailable when qemu or the sysroot is not set up
    import cloudpickle

    shim = os.path.join(qemu.cache_dir(), "rpc-shim")
    os.makedirs(shim, exist_ok=True)
    link = os.path.join(shim, "cloudpickle")
    if not os.path.exists(link):
        os.symlink(os.path.dirname(cloudpickle.__file__), link)
    with open(os.path.join(shim, "sitecustomize.py"), "w") as f:
        f.write(_SITECUSTOMIZE)
    wrapper = os.path.join(shim, "python-aarch64")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nexec "{env["QEMU"]}" -L "{env["ARM_SYSROOT"]}" '
                f'"{env["ARM_PYTHON"]}" "$@"\n')
    os.chmod(wrapper, 0o755)
    proc_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": os.pathsep.join([shim, env["ARM_SITE"]]),
        "PYTHONNOUSERSITE": "1",
        "PYTHONPYCACHEPREFIX": os.path.join(qemu.cache_dir(), "pycache"),
        "TVMFRONT_QEMU_EXECUTABLE": wrapper,
        "OMP_NUM_THREADS": "1",
        "TVM_NUM_THREADS": "1",
    }
    return [wrapper, *args], proc_env
