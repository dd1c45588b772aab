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
press. A helper thread started before the mask keeps SIGINT unblocked, so the kernel delivers
presses to it and Python runs the handler in the main thread as before. A stop-at-once press
ends the workers (SIGTERM: quiet) so the batch in flight ends now.
"""

import contextlib
import signal
import sys
import threading

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
    previous = signal.signal(signal.SIGINT, sigint)
    receiver = _Receiver()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield sigint
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending press is delivered here
        receiver.stop()
        signal.signal(signal.SIGINT, previous)
    sigint.checkpoint()


class _Receiver:
    """A thread with SIGINT unblocked while the main thread blocks it: the kernel delivers a
    process-wide SIGINT to a thread that does not block it, and CPython's C handler, wherever
    it runs, has the main thread run the Python handler."""

    def __init__(self):
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._done.wait, name="tvmfront-sigint",
                                        daemon=True)
        self._thread.start()  # before the main thread blocks SIGINT: it inherits the mask

    def stop(self):
        self._done.set()
        self._thread.join()
