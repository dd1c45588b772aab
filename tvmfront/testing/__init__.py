"""Helpers that start processes for tests and trying things out, apart from the library:
local TVM RPC trackers and servers (``tvmfront.testing.rpc``) and the aarch64 Python under
qemu (``tvmfront.testing.qemu``). Nothing in the library imports this package."""
