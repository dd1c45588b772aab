"""Where this process stands in an MPI job, read from the launcher's environment variables:
no MPI library is loaded, so `tvf.distributed.rank()` is cheap and works without mpi4py."""

import os

# (rank variable, size variable) per launcher: MPICH's hydra and Intel MPI (PMI), Open MPI,
# MVAPICH, Slurm's srun. The first pair present wins.
_LAUNCHERS = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
              ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))
# ranks on this machine (to share its cores among them)
_LOCAL_SIZE = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE",
               "SLURM_NTASKS_PER_NODE")


def _pair():
    for rank, size in _LAUNCHERS:
        if rank in os.environ and size in os.environ:
            return int(os.environ[rank]), int(os.environ[size])
    return None


def launched():
    """Whether an MPI launcher (mpiexec, mpirun, srun) started this process."""
    return _pair() is not None


def rank():
    """This process's rank from the launcher's environment; 0 without a launcher."""
    pair = _pair()
    return pair[0] if pair else 0


def world_size():
    """The number of processes the launcher started; 1 without a launcher."""
    pair = _pair()
    return pair[1] if pair else 1


def local_size():
    """The number of this job's processes on this machine (1 when unknown)."""
    for name in _LOCAL_SIZE:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1
