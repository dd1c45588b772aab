"""Joining the job: init() once per process, then rank() and world_size()."""

import atexit
import os
import sys
import time
import traceback

from . import env
from .comm import Communicator, DistributedError, Solo

_world = None


def init(timeout=None):
    """Join the MPI job this process was launched in and return its communicator; calling it
    again returns the same one. A process started without a launcher (plain ``python``) is a
    world of one and needs no MPI. Under a launcher it needs mpi4py (``pip install
    'tvmfront[distributed]'``: mpi4py and an MPICH with ``mpiexec``), and it

    - makes an uncaught exception on any rank abort the whole job (MPI_Abort), where the
      other ranks would otherwise wait forever in their next collective;
    - makes a rank whose script ends (or calls sys.exit) while the others still wait for it in
      a collective end their wait at once with a DistributedError naming it;
    - gives TVM ``cores // ranks on this machine`` threads per rank unless TVM_NUM_THREADS is
      set, so that ranks sharing a machine do not oversubscribe it.

    timeout: seconds a collective may wait for the other ranks before DistributedError
    (default TVMFRONT_DIST_TIMEOUT, else 600).

    >>> world = tvf.distributed.init()       # mpiexec -n 2 python train.py
    >>> world.rank, world.size
    (0, 2)
    """
    global _world
    if _world is not None:
        return _world
    if not env.launched():
        _world = Solo()
        return _world
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError(
            f"this process was started by an MPI launcher (rank {env.rank()} of "
            f"{env.world_size()}) but mpi4py is not installed: pip install "
            f"'tvmfront[distributed]' (mpi4py and mpich)") from None
    _share_cores()
    _world = Communicator(MPI, timeout)
    if _world.size > 1:
        _abort_on_uncaught_exception(_world)
        # runs before mpi4py's MPI_Finalize, which is a C-level exit hook
        atexit.register(_world.departures.leave)
    return _world


def _share_cores():
    """TVM_NUM_THREADS = this machine's cores / its ranks, unless set (read by TVM's thread
    pool when the first kernel runs)."""
    if "TVM_NUM_THREADS" in os.environ:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ["TVM_NUM_THREADS"] = str(max(1, (cpus or 1) // env.local_size()))


# MPI_Abort makes the launcher kill every rank at once, and MPICH's launcher drops what a
# rank wrote but it had not forwarded yet: a traceback written line by line came out cut.
# The report is one write, and the launcher gets this long to forward it before the abort.
_FORWARD_GRACE_S = 0.5


def _abort_on_uncaught_exception(world):
    previous = sys.excepthook

    def hook(kind, value, tb):
        if previous is not sys.__excepthook__:  # a user's hook: let it report its own way
            previous(kind, value, tb)
            report = ""
        else:
            report = "".join(traceback.format_exception(kind, value, tb))
        report += (f"tvmfront.distributed: rank {world.rank} of {world.size} failed "
                   f"(above); aborting the job, whose other ranks would wait for it\n")
        sys.stderr.write(report)
        sys.stderr.flush()
        time.sleep(_FORWARD_GRACE_S)
        world.abort(1)

    sys.excepthook = hook


def initialized():
    """Whether init() has run in this process."""
    return _world is not None


def rank():
    """This process's rank: init()'s when it ran, else the launcher's environment's (0 without
    a launcher). Rank 0 prints, writes checkpoints and exports."""
    return _world.rank if _world is not None else env.rank()


def world_size():
    """The number of processes in the job (1 without a launcher)."""
    return _world.size if _world is not None else env.world_size()


def is_main():
    """Whether this is rank 0, the rank that prints, checkpoints and exports."""
    return rank() == 0
