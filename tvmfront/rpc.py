"""Measure on other machines over TVM RPC: tune for a board, or on a fleet of boards at once.

    tvf.tune(module, rpc="board:9090")           # one RPC server
    tvf.tune(module, rpc="tracker:9190/rk3588")   # every server a tracker holds under a key
    tvf.tune(module, rpc={"tracker": "tracker:9190", "key": "rk3588", "timeout": 120})

Candidates are built here (cross-compiled and linked here for another CPU: the device needs
no compiler) and timed on the device by MetaSchedule's RPCRunner, one session per candidate.
On the device: ``python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090`` (one server), or
``... --tracker tracker:9190 --key rk3588`` on every device of a fleet, with a tracker
(``python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190``) somewhere all can reach.
A server needs TVM, tvm-ffi, numpy and cloudpickle installed; it serves one session at a time.

The spec (``rpc=``): ``"host:port"``, ``"host:port/key"`` (a tracker and the key its servers
registered under), a dict ``{"host", "port"}`` or ``{"tracker": "host:port", "key"}`` with an
optional ``"timeout"`` (seconds one measurement session may take, default 60), or a Remote.

``start_tracker`` / ``start_server`` start local processes (tests, trying it out on loopback;
``start_server(aarch64=True)`` runs the aarch64 server under qemu, see tvmfront.cross).
"""

import collections
import contextlib
import gc
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from . import cross
from ._tvm import (cross_compiler_name, export_library, host_arch, ms_remote_builder,
                   ms_rpc_runner, remote_device, rpc_connect, rpc_connect_tracker, target_arch)
from .errors import TvmfrontError

DEFAULT_TIMEOUT = 60  # seconds one measurement session may take (the server ends it then)
CONNECT_TIMEOUT = 15  # seconds to reach a server or tracker before giving up


class RpcError(TvmfrontError, ConnectionError):
    """An RPC server or tracker that cannot be reached or has no server for the key."""


class RpcSpecError(TvmfrontError, ValueError):
    """A malformed rpc= spec."""


class Remote(collections.namedtuple("Remote", "host port key timeout")):
    """Where candidates are measured: the server at host:port (key None), or the servers a
    tracker at host:port holds under `key`. timeout: seconds one session may take."""

    @property
    def tracker(self):
        return self.key is not None

    def __str__(self):
        return f"{self.host}:{self.port}" + (f"/{self.key}" if self.tracker else "")


_FORMS = ('"host:port" (an RPC server), "host:port/key" (a tracker and its servers\' key), '
          '{"host": ..., "port": ...} or {"tracker": "host:port", "key": ...} '
          '(either dict may add "timeout": seconds)')


def _host_port(text, what):
    m = re.fullmatch(r"\s*\[?([^\s\[\]/]+?)\]?:(\d+)\s*", str(text))
    if not m or not 0 < int(m.group(2)) < 65536:
        raise RpcSpecError(f"rpc: {what} {text!r} is not host:port; rpc= takes {_FORMS}")
    return m.group(1), int(m.group(2))


def parse(spec):
    """A Remote from an rpc= spec (see the module docstring); RpcSpecError if malformed."""
    if isinstance(spec, Remote):
        return spec
    if isinstance(spec, str):
        address, slash, key = spec.partition("/")
        if slash and not key.strip():
            raise RpcSpecError(f"rpc: {spec!r} names no key after '/'; rpc= takes {_FORMS}")
        host, port = _host_port(address, "address")
        return Remote(host, port, key.strip() if slash else None, DEFAULT_TIMEOUT)
    if isinstance(spec, dict):
        unknown = set(spec) - {"host", "port", "tracker", "key", "timeout"}
        if unknown:
            raise RpcSpecError(f"rpc: unknown field(s) {sorted(unknown)}; rpc= takes {_FORMS}")
        timeout = spec.get("timeout", DEFAULT_TIMEOUT)
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise RpcSpecError(f"rpc: timeout must be a positive number of seconds, "
                               f"got {timeout!r}")
        if "tracker" in spec:
            if "host" in spec or "port" in spec:
                raise RpcSpecError("rpc: give either tracker (with key) or host and port")
            key = spec.get("key")
            if not isinstance(key, str) or not key.strip():
                raise RpcSpecError(f"rpc: a tracker needs the key its servers registered "
                                   f"under (--key); rpc= takes {_FORMS}")
            host, port = _host_port(spec["tracker"], "tracker")
            return Remote(host, port, key.strip(), timeout)
        if "host" not in spec or "port" not in spec:
            raise RpcSpecError(f"rpc: {spec!r} needs host and port, or tracker and key; "
                               f"rpc= takes {_FORMS}")
        host, port = _host_port(f"{spec['host']}:{spec['port']}", "address")
        if spec.get("key") is not None:
            raise RpcSpecError("rpc: key goes with tracker; a server alone is host and port")
        return Remote(host, port, None, timeout)
    raise RpcSpecError(f"rpc: expected a string or a dict, got {type(spec).__name__}; "
                       f"rpc= takes {_FORMS}")


# ---- reaching the servers ---------------------------------------------------------------------
def _what_to_check(remote):
    if remote.tracker:
        return (f"is a tracker running there (python -m tvm.exec.rpc_tracker --host 0.0.0.0 "
                f"--port {remote.port}), and is the address reachable from here?")
    return (f"is an RPC server running there (python -m tvm.exec.rpc_server --host 0.0.0.0 "
            f"--port {remote.port}), and is the address reachable from here (firewall, the "
            f"server's --host)?")


def _probe(remote, timeout):
    """A plain TCP connect, so an unreachable address fails fast with a clear error."""
    try:
        socket.create_connection((remote.host, remote.port), timeout=timeout).close()
    except OSError as err:
        kind = "tracker" if remote.tracker else "RPC server"
        raise RpcError(f"rpc: cannot reach the {kind} at {remote.host}:{remote.port} "
                       f"({err.strerror or err}): {_what_to_check(remote)}") from None


def _within(seconds, fn, what):
    """fn() in a daemon thread; RpcError naming `what` if it takes longer than `seconds`
    (TVM's connects retry or wait without a limit of their own)."""
    box = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise RpcError(f"rpc: {what} did not answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def servers(remote, timeout=CONNECT_TIMEOUT):
    """How many servers measure for `remote`: 1 for a server (after an RPC handshake), the
    servers the tracker holds under the key otherwise. RpcError, naming the address and what
    to check, when it cannot be reached or (tracker) holds no server for the key."""
    remote = parse(remote)
    _probe(remote, timeout)
    if not remote.tracker:
        try:
            _within(timeout, lambda: _close(rpc_connect(remote.host, remote.port, timeout=5)),
                    f"the RPC server at {remote}")
        except RpcError as err:
            raise RpcError(f"{err}: is it a TVM RPC server (python -m tvm.exec.rpc_server), "
                           f"not busy with another client?") from None
        except Exception as err:
            raise RpcError(f"rpc: {remote} accepts connections but the RPC handshake failed "
                           f"({_last_line(err)}): {_what_to_check(remote)}") from None
        return 1
    try:
        summary = _within(timeout, lambda: rpc_connect_tracker(remote.host,
                                                               remote.port).summary(),
                          f"the tracker at {remote.host}:{remote.port}")
    except RpcError:
        raise
    except Exception as err:
        raise RpcError(f"rpc: {remote.host}:{remote.port} accepts connections but does not "
                       f"answer as a TVM tracker ({_last_line(err)}): "
                       f"{_what_to_check(remote)}") from None
    keys = [info["key"].split(":", 1)[-1] for info in summary.get("server_info", [])]
    count = keys.count(remote.key)
    if count == 0:
        have = ", ".join(sorted(set(keys))) or "none"
        raise RpcError(f"rpc: the tracker at {remote.host}:{remote.port} holds no server under "
                       f"key {remote.key!r} (keys it holds: {have}): start servers with "
                       f"python -m tvm.exec.rpc_server --tracker {remote.host}:{remote.port} "
                       f"--key {remote.key}")
    return count


def device_threads(remote):
    """The threads TVM's runtime uses on a device of `remote` (its cores, or TVM_NUM_THREADS
    there): MetaSchedule's num-cores for a target that does not set it."""
    with session(remote) as sess:
        return int(sess.get_function("runtime.NumThreads")())


def _last_line(err):
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


def _close(session):
    del session
    gc.collect()  # a direct server serves one client at a time: let it go at once


@contextlib.contextmanager
def session(remote):
    """An RPC session with a server of `remote` (a tracker hands out a free one). Ended on
    exit: the caller must not keep remote objects (tensors, modules) past it."""
    remote = parse(remote)
    timeout = int(remote.timeout)
    if remote.tracker:
        sess = _within(max(CONNECT_TIMEOUT, timeout),
                       lambda: rpc_connect_tracker(remote.host, remote.port).request(
                           remote.key, priority=1, session_timeout=timeout, max_retry=2),
                       f"the tracker at {remote.host}:{remote.port} (no free server under key "
                       f"{remote.key!r}?)")
    else:
        sess = _within(max(CONNECT_TIMEOUT, timeout),
                       lambda: rpc_connect(remote.host, remote.port, timeout=timeout),
                       f"the RPC server at {remote}")
    try:
        yield sess
    finally:
        del sess
        gc.collect()


def upload(sess, executable, target, name="tvmfront_kernels.so"):
    """(remote module, remote device): `executable` linked here as a shared library for the
    target's CPU (with the cross compiler when it is not this machine's), uploaded, loaded."""
    with tempfile.TemporaryDirectory(prefix="tvmfront-rpc-") as tmp:
        path = os.path.join(tmp, name)
        export_library(executable, path, cxx_for(target))
        sess.upload(path, name)
    return sess.load_module(name), remote_device(sess, target.kind.name)


def cxx_for(target):
    """The cross compiler that links libraries for `target` here (None: this machine's
    compiler); TvmfrontError when it is not installed."""
    arch = target_arch(target)
    if arch == host_arch():
        return None
    cxx = cross_compiler_name(arch)
    if cxx is None or shutil.which(cxx) is None:
        raise TvmfrontError(f"tuning over RPC for {arch} links each candidate here with a "
                            f"cross compiler, and none is installed ({cxx or 'unknown for ' + arch}"
                            f"): install it (Debian: g++-{arch.replace('_', '-')}-linux-gnu; "
                            f"bash scripts/setup_arm.sh for aarch64) or set "
                            f"TVMFRONT_CXX_{arch.upper()}")
    return cxx


def builder(target, timeout_sec=120):
    """MetaSchedule builder for remote measurement: links each candidate here."""
    return ms_remote_builder(cxx=cxx_for(target), timeout_sec=timeout_sec)


def runner(remote, workers=1):
    """MetaSchedule's RPCRunner for `remote`, `workers` sessions at once."""
    remote = parse(remote)
    return ms_rpc_runner(remote.host, remote.port, remote.key, timeout_sec=remote.timeout,
                         max_workers=max(1, int(workers)))


# ---- local trackers and servers (tests, trying it out on loopback) -------------------------
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
    (tvmfront.cross; ~1 min to start, two emulated TVM imports)."""
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
    env = cross.arm_env()  # ArmUnavailable when qemu or the sysroot is not set up
    import cloudpickle

    shim = os.path.join(cross.cache_dir(), "rpc-shim")
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
        "PYTHONPYCACHEPREFIX": os.path.join(cross.cache_dir(), "pycache"),
        "TVMFRONT_QEMU_EXECUTABLE": wrapper,
        "OMP_NUM_THREADS": "1",
        "TVM_NUM_THREADS": "1",
    }
    return [wrapper, *args], proc_env
