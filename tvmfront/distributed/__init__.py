"""Data-parallel training across processes and machines, on MPI.

Launch the same script once per worker; each trains on its shard of every batch, gradients are
averaged with one allreduce per step, and every rank applies the same update:

    mpiexec -n 2 python train.py                  # train.py: tvf.Trainer(module, distributed=True)
    mpiexec -n 8 -f hosts python train.py         # two machines: see the README

mpi4py is imported only by init() under a launcher: `import tvmfront` never loads MPI.
"""

from .comm import DistributedError
from .data_parallel import DataParallel, state_hash
from .world import init, initialized, is_main, rank, world_size

__all__ = ["DataParallel", "DistributedError", "init", "initialized", "is_main", "rank",
           "state_hash", "world_size"]
