"""Measuring on other machines over TVM RPC, public names (tvmfront.tuning.remote has the
details). Local trackers and servers for tests are tvmfront.testing.rpc.

    tvf.tune(module, rpc="board:9090")           # one RPC server
    tvf.tune(module, rpc="tracker:9190/rk3588")   # every server a tracker holds under a key
"""

from .tuning.remote import (CONNECT_TIMEOUT, DEFAULT_TIMEOUT, Remote, RpcError, RpcSpecError,
                            builder, cxx_for, device_threads, parse, runner, servers, session,
                            upload)

__all__ = ["CONNECT_TIMEOUT", "DEFAULT_TIMEOUT", "Remote", "RpcError", "RpcSpecError",
           "builder", "cxx_for", "device_threads", "parse", "runner", "servers", "session",
           "upload"]
