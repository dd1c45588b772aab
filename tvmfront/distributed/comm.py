"""The processes of one job and the collectives training needs, on MPI (mpi4py).

A collective never waits forever: it is started non-blocking and polled against a deadline
(TVMFRONT_DIST_TIMEOUT seconds, default 600). Polling also lets a waiting rank sleep instead
of spinning, which matters when ranks share cores with other work: MPICH's blocking calls
busy-wait. A rank that dies is normally reaped by the launcher (hydra kills the whole job and
reports which rank died), and a rank that exits sends a notice (departures.py) that ends the
wait at once; the deadline covers the cases neither can see: a rank that hangs, or a launcher
run without cleanup.
"""

import json
import os
import sys
import time

import numpy as np

from ..errors import TvmfrontError
from .departures import Departures

DEFAULT_TIMEOUT = 600.0  # seconds: torch.distributed's default for NCCL too
_SPIN_S = 1e-3   # poll without sleeping this long: in a balanced step the peer is that close
_SPIN_BYTES_PER_S = 1e9  # ...and as long as moving the buffer may take: MPICH moves a large
                         # one in rounds, each driven by a poll, so a sleeping rank stalls it
_NAP_MAX_S = 5e-4  # the longest sleep between polls: the latency a late peer can add
_DEPARTED_GRACE_S = 1.0  # a rank that left after its part of this collective: the rest of
                         # the transfer may still need polls here to complete


class DistributedError(TvmfrontError, RuntimeError):
    """A collective failed or timed out: another rank died, hangs, or disagrees."""


def timeout_from_env():
    value = os.environ.get("TVMFRONT_DIST_TIMEOUT")
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"TVMFRONT_DIST_TIMEOUT must be a number of seconds > 0, got {value!r}")
    return seconds


class Solo:
    """A world of one process (started without a launcher): every collective is a no-op."""

    rank, size = 0, 1

    def allreduce_sum(self, buffer, what):
        pass

    def broadcast(self, buffer, what):
        pass

    def broadcast_json(self, value, what):
        return value

    def barrier(self, what="barrier"):
        pass

    def __repr__(self):
        return "<tvmfront world of one process>"


class Communicator:
    """MPI_COMM_WORLD through mpi4py, with deadlines on every collective."""

    def __init__(self, mpi, timeout=None):
        self._mpi = mpi
        self.comm = mpi.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = timeout_from_env() if timeout is None else float(timeout)
        self.waited = 0.0  # seconds spent in collectives (the allreduce's share of a step)
        self.departures = Departures(mpi, self.comm) if self.size > 1 else None

    def _wait(self, request, what, nbytes=0):
        """Poll `request` until done: spin while the transfer of `nbytes` may be under way,
        then sleep between polls (progress in MPICH happens inside MPI calls, so the sleep
        caps at _NAP_MAX_S); DistributedError after `timeout` seconds."""
        start = time.perf_counter()
        spin = _SPIN_S + nbytes / _SPIN_BYTES_PER_S
        nap = 1e-5
        departed_at = None
        while not request.Test():
            now = time.perf_counter()
            if now - start < spin:
                continue
            if now - start > self.timeout:
                raise DistributedError(
                    f"rank {self.rank} of {self.size}: {what} waited {now - start:.0f} s for "
                    f"the other ranks: one of them hangs, or died (the launcher's output then "
                    f"names it). TVMFRONT_DIST_TIMEOUT sets how long to wait.")
            if departed_at is None and self.departures and self.departures.poll():
                departed_at = now
            if departed_at is not None and now - departed_at > _DEPARTED_GRACE_S:
                gone = ", ".join(map(str, self.departures.departed))
                raise DistributedError(
                    f"rank {self.rank} of {self.size}: {what} cannot finish: rank(s) {gone} "
                    f"left the job (the script returned or called sys.exit) while this rank "
                    f"still needed them; every rank must run the same collectives (the same "
                    f"number of steps and epochs)")
            time.sleep(nap)
            nap = min(2 * nap, _NAP_MAX_S)
        self.waited += time.perf_counter() - start

    def allreduce_sum(self, buffer, what):
        """Sum the contiguous numpy `buffer` over all ranks, in place on every rank."""
        self._wait(self.comm.Iallreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM), what,
                   buffer.nbytes)

    def broadcast(self, buffer, what):
        """Rank 0's `buffer` into every rank's, in place."""
        self._wait(self.comm.Ibcast(buffer, root=0), what, buffer.nbytes)

    def broadcast_json(self, value, what):
        """Rank 0's JSON-able `value`, returned on every rank (JSON, never pickle)."""
        data = json.dumps(value).encode() if self.rank == 0 else b""
        size = np.array([len(data)], np.int64)
        self.broadcast(size, what)
        raw = np.frombuffer(data, np.uint8).copy() if self.rank == 0 else \
            np.empty(int(size[0]), np.uint8)
        self.broadcast(raw, what)
        return json.loads(raw.tobytes().decode())

    def barrier(self, what="barrier"):
        self._wait(self.comm.Ibarrier(), what)

    def abort(self, code=1):
        """End every rank of the job now (MPI_Abort): the launcher kills the others."""
        sys.stderr.flush()
        self.comm.Abort(code)

    def __repr__(self):
        return f"<tvmfront MPI world: rank {self.rank} of {self.size}>"
