"""Which ranks have left the job: a rank whose script ended (returned, or called sys.exit)
while the others still wait for it in a collective.

MPICH's launcher ends the job when a rank dies or aborts, but not when one exits: its
MPI_Finalize blocks until every rank finalizes, so the others waited out their whole deadline
(TVMFRONT_DIST_TIMEOUT, 600 s) and then blamed "a rank that died". Here every rank, on its
way out, sends each peer a notice on a communicator of its own; a rank waiting in a
collective polls for notices, and one from a rank that has not joined that collective ends
the wait at once, naming the rank.

Every rank posts one receive per peer at init and sends each peer exactly one notice at exit,
then waits for all of its peers' notices (as MPI_Finalize would wait for them), so no message
is left unmatched and no request is cancelled.
"""

import time

import numpy as np

_NAP_S = 1e-3  # sleep between polls while waiting at exit for the peers to leave too


class Departures:
    def __init__(self, mpi, comm):
        self._mpi = mpi
        self._comm = comm.Dup()  # its own context: no user message can match a notice
        self._rank = comm.Get_rank()
        self.peers = [r for r in range(comm.Get_size()) if r != self._rank]
        self._inbox = [np.zeros(1, np.int8) for _ in self.peers]
        self._pending = [self._comm.Irecv(buf, source=peer) for buf, peer in
                         zip(self._inbox, self.peers)]
        self.departed = []  # ranks whose notice arrived, in arrival order
        self._left = False

    def poll(self):
        """The ranks that have left so far (cheap: one MPI_Testsome)."""
        done = self._mpi.Request.Testsome(self._pending) if not self._left else None
        for i in done or ():
            self.departed.append(self.peers[i])
        return self.departed

    def leave(self):
        """Tell every peer this rank is leaving, then wait until they all have left too."""
        if self._left:
            return
        self._left = True
        notice = np.ones(1, np.int8)
        sends = [self._comm.Isend(notice, dest=peer) for peer in self.peers]
        waiting = sends + self._pending
        while not self._mpi.Request.Testall(waiting):
            time.sleep(_NAP_S)  # a peer may still be writing its checkpoint: do not spin
