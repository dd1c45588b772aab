"""Ctrl-C while tuning: any number of presses leaves a valid store holding what was measured.

    1st press   stop after the current batch; tune returns normally (report.stopped
                'interrupt')
    2nd press   stop at once: KeyboardInterrupt, raised after what was measured is merged
    more        change nothing; a press while the records are saved waits for the save
    before the search starts (default latencies being timed) or after it ended (records
    saved, verdicts timed, the module rebuilt): one press stops at once

The handler never raises. A KeyboardInterrupt raised by a signal handler lands wherever the
main thread happens to be, and inside MetaSchedule that is often Python code called from C++
where an exception cannot pass: the process then dies in std::terminate (SIGSEGV) before a
record is written. So the handler only sets flags, and tvmfront's own callbacks (the task
scheduler before each batch, the measure callback after it: Run.next_task / Run.on_batch)
and checkpoint() raise KeyboardInterrupt where TVM carries it out cleanly.

A terminal's Ctrl-C reaches the whole process group, MetaSchedule's build and run workers too.
A worker that gets it while importing TVM prints a KeyboardInterrupt traceback, and one that
gets it mid-candidate fails that candidate, so the first press could not finish the batch it
promised to. So during the block the main thread blocks SIGINT: the threads it starts inherit
the mask, and the workers those threads spawn inherit it through exec, so workers never see a
press. A stop-at-once press ends the workers (SIGTERM: quiet) so the batch in flight ends now.

Presses are handled in a receiver thread, not by a Python signal handler. With SIGINT blocked
in the main thread the kernel delivers a press to another thread, and CPython (3.11) then runs
the Python handler only once the main thread re-checks its pending signals, which it may not
do for a whole tuning run: CI saw a first press ignored for ten batches (two minutes). The C
handler writes every press to the wakeup fd (signal.set_wakeup_fd) from whichever thread the
kernel chose, and the receiver, blocked on that fd, handles it at once.
"""

import contextlib
import os
import signal
import sys
import threading
import time

import psutil

# the command line of MetaSchedule's build and run workers (tvm.support.popen_pool)
_WORKER_MODULE = "tvm.exec.popen_worker"


class Sigint:
    """What Ctrl-C presses asked for during one tuning run (see the module docstring)."""

    def __init__(self, run):
        self.run, self.presses = run, 0

    def __call__(self, signum, frame):
        self.presses += 1
        if self.run.abort:
            return
        if self.run.phase == "search" and self.presses == 1:
            self.run.stop = "interrupt"
            _say("tune: Ctrl-C: stopping after the current batch, keeping every record "
                 "(press Ctrl-C again to stop at once)")
            return
        self.run.abort = True
        _end_workers()
        if self.run.phase == "search":
            self.run.stop = "interrupt"
            _say("tune: Ctrl-C again: stopping now; the records measured so far are saved "
                 "first")
        elif self.run.phase == "before":
            _say("tune: Ctrl-C: stopping before the search (nothing measured yet)")
        else:
            _say("tune: Ctrl-C: stopping now (the records measured are saved)")

    def checkpoint(self):
        """KeyboardInterrupt here when a press asked to stop at once (after the save)."""
        if self.run.abort:
            raise KeyboardInterrupt


def _end_workers():
    """SIGTERM this process's MetaSchedule workers (they never see SIGINT, module docstring):
    the candidates in flight fail at once and the batch ends."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if _WORKER_MODULE in child.cmdline():
                    child.terminate()


def _say(text):
    sys.stderr.write("\n" + text + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def handled(run):
    """Ctrl-C handled as the module docstring says while the block runs (main thread only;
    elsewhere Python delivers no signals). Yields the Sigint; a stop-at-once request still
    pending when the block ends is raised as KeyboardInterrupt then."""
    sigint = Sigint(run)
    if threading.current_thread() is not threading.main_thread():
        yield sigint
        return
    receiver = _Receiver(sigint)
    # the C handler must be installed for the wakeup fd to be written; the Python one the
    # main thread runs later has nothing left to do (the receiver handled the press)
    previous = signal.signal(signal.SIGINT, _handled_by_receiver)
    previous_fd = signal.set_wakeup_fd(receiver.wakeup_fd, warn_on_full_buffer=False)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield sigint
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending press is delivered here
        signal.set_wakeup_fd(previous_fd)
        receiver.stop()  # after it has handled every press written to the fd
        _run_pending_handlers()
        signal.signal(signal.SIGINT, previous)
    sigint.checkpoint()


def _handled_by_receiver(signum, frame):
    """The Python-level SIGINT handler during the block: the receiver thread did the work."""


def _run_pending_handlers():
    """Have the main thread run the Python handlers of presses it has not run yet, before the
    previous handler returns: a press handled during the block must not raise
    KeyboardInterrupt later. Retaking the GIL makes CPython 3.11 recompute whether the main
    thread has signals to handle; the next call checks and runs them."""
    for _ in range(2):
        time.sleep(0.001)


class _Receiver:
    """A thread that handles each press written to its pipe by CPython's C-level handler
    (the wakeup fd) as soon as it arrives, whichever thread the kernel delivered it to."""

    _STOP = b"\0"  # no signal has number 0

    def __init__(self, sigint):
        self._sigint = sigint
        self._read, self.wakeup_fd = os.pipe()
        os.set_blocking(self.wakeup_fd, False)  # the C handler writes it: it must never block
        self._thread = threading.Thread(target=self._serve, name="tvmfront-sigint",
                                        daemon=True)
        # before the main thread blocks SIGINT: this thread keeps it unblocked, so the kernel
        # always has a thread to deliver a press to (else it would wait, pending, to the end)
        self._thread.start()

    def _serve(self):
        try:
            while True:
                for byte in os.read(self._read, 64):
                    if byte == 0:
                        return
                    if byte == signal.SIGINT:
                        self._sigint(signal.SIGINT, None)
        finally:
            os.close(self._read)

    def stop(self):
        os.write(self.wakeup_fd, self._STOP)
        self._thread.join()
        os.close(self.wakeup_fd)
