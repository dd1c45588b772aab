"""``tvmfront launch -n N script.py [args]``: the script on N processes of this Python, under
the mpiexec installed next to it (the mpich wheel of the distributed extra), so that neither
path needs typing. ``--hosts FILE`` spreads them over the machines FILE lists (hydra's ``-f``:
one ``host[:processes]`` a line).

    tvmfront launch -n 2 examples/lenet_digits.py --distributed
    python -m tvmfront.distributed.launch -n 2 examples/lenet_digits.py --distributed
"""

import argparse
import os
import shutil
import sys

from .comm import DistributedError


def mpiexec_path():
    """The mpiexec beside this Python (a venv's bin), else the first on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        raise DistributedError("no mpiexec beside this Python or on PATH: pip install "
                               "'tvmfront[distributed]' (mpi4py and mpich)")
    return found


def command(processes, script, args=(), hosts=None):
    """The mpiexec command line running `script` with `args` on `processes` ranks."""
    if processes < 1:
        raise ValueError(f"launch: -n must be at least 1, got {processes}")
    if hosts and not os.path.isfile(hosts):  # mpiexec said only "error parsing parameters"
        raise ValueError(f"launch: --hosts {hosts!r} is not a file")
    hostfile = ["-f", hosts] if hosts else []
    return [mpiexec_path(), *hostfile, "-n", str(processes), sys.executable, script, *args]


def add_arguments(parser):
    parser.add_argument("-n", "--processes", type=int, required=True, help="number of ranks")
    parser.add_argument("--hosts", metavar="FILE", help="host file (one host[:n] a line)")
    parser.add_argument("script", help="the Python script every rank runs")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")


def run(args):
    """Replace this process with mpiexec (its exit status is the job's)."""
    argv = command(args.processes, args.script, args.args, args.hosts)
    sys.stdout.flush()
    os.execv(argv[0], argv)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tvmfront launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    try:
        run(parser.parse_args(argv))
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
