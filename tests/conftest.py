"""Test-session environment: builds cache into a temporary folder, never the user's.

The compile cache (tvmfront.cache) would otherwise read and fill ~/.cache/tvmfront/modules:
a run must not depend on what an earlier run (or the user) left there. Tests that check the
cache itself point TVMFRONT_CACHE_DIR at their own folders. A folder the caller set is kept
(to reuse builds between local runs: TVMFRONT_CACHE_DIR=... pytest).

Eager kernels (every op test, gradcheck, opcheck) are built with bound checks
(TVMFRONT_BOUND_CHECKS=1, see tvmfront/boundcheck.py): a read outside a buffer raises
OutOfBoundsError instead of passing garbage on. TVMFRONT_BOUND_CHECKS=0 pytest turns them off.

scripts/test.sh runs the suite in two pytest-xdist workers, a test file per worker at a time
(--dist loadfile: module fixtures build once). Workers share the build cache folder made here
(the controller makes it before they start; a write is atomic, see tvmfront.cache).
"""

import logging
import os
import shutil
import tempfile

import pytest

_made = None
if not os.environ.get("TVMFRONT_CACHE_DIR"):
    _made = tempfile.mkdtemp(prefix="tvmfront-test-cache-")
    os.environ["TVMFRONT_CACHE_DIR"] = _made  # subprocesses (examples, reloads) inherit it


os.environ.setdefault("TVMFRONT_BOUND_CHECKS", "1")


# The files that take longest, longest first (seconds per file in one 2-worker run of the whole
# suite, 2026-12-07: 482 s for test_schedule_fidelity.py down to 32 s for test_join.py): under
# xdist (scripts/test.sh: --dist loadfile --no-loadscope-reorder) they start first, so no
# worker is left with one of them at the end while the other idles. Simulated on that run's
# times, this order ends 1784 s after the start against 1845 s for the list it replaced (from
# 2026-12-03, without test_schedule_fidelity.py, which then started late). Files not named keep
# their order after these; a file missing here only costs balance. Remeasure with
# --junitxml and sum each file's testcase times.
LONGEST_FIRST = ["test_schedule_fidelity.py", "test_tune.py", "test_rpc.py", "test_ops.py",
                 "test_tune_interrupt.py", "test_arm.py", "test_dropout_training.py",
                 "test_derived_max_pool.py", "test_symbolic_models.py", "test_training.py",
                 "test_examples.py", "test_conv_grad.py", "test_tune_symbolic.py",
                 "test_random.py", "test_schedule_row_tails.py", "test_cache.py",
                 "test_attention.py", "test_tune_correctness.py", "test_optim_torch.py",
                 "test_distributed_mpi.py", "test_fused_batchnorm.py", "test_fastmath.py",
                 "test_pool_grad_schedule.py", "test_untuple_gradients.py",
                 "test_symbolic_ops.py", "test_derived_training.py", "test_quantize.py",
                 "test_fold_bn.py", "test_checkpoint.py", "test_join.py"]


def pytest_collection_modifyitems(session, config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: the usual order (quick files fail first under -x)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


class _Fallbacks(logging.Handler):
    """The schedule fallbacks (tvmfront.schedule.failures' warnings) logged in this process
    since the current test's setup began."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        message = record.getMessage()
        if "falling back" in message:
            self.messages.append(message)


_fallbacks = _Fallbacks()
logging.getLogger("tvmfront.schedule").addHandler(_fallbacks)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _fallbacks.messages.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    # A rule that fails on a kernel only logs a warning and the kernel gets a slower
    # schedule, with right values: a test of values alone cannot see it (Transformer dropout
    # ran 5x slower for sessions that way). So every kernel a test builds here (its module
    # fixtures' too) must keep its rule, unless the test makes a rule fail on purpose.
    result = yield
    if _fallbacks.messages and item.get_closest_marker("falls_back") is None:
        shown = "\n  ".join(_fallbacks.messages[:5])
        pytest.fail(f"{len(_fallbacks.messages)} kernel(s) fell back to a simpler schedule "
                    f"(mark the test falls_back if it makes a rule fail on purpose):\n  {shown}",
                    pytrace=False)
    return result


def pytest_sessionfinish(session, exitstatus):
    if _made:
        shutil.rmtree(_made, ignore_errors=True)
