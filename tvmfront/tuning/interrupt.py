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
"""

import contextlib
import signal
import sys
import threading


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
    try:
        yield sigint
    finally:
        signal.signal(signal.SIGINT, previous)
    sigint.checkpoint()
