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

Local trackers and servers (tests, trying it out on loopback) are tvmfront.testing.rpc.
"""

import collections
import contextlib
import gc
import os
import re
import shutil
import socket
import tempfile
import threading

from .._tvm import (cross_compiler_name, export_library, host_arch, ms_remote_builder,
                   ms_rpc_runner, remote_device, rpc_connect, rpc_connect_tracker, target_arch)
from ..errors import TvmfrontError

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
