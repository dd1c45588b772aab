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


# The files that take longest, longest first (CPU seconds per file, 2026-12-03: 153 s for
# test_ops.py down to 33 s for test_random.py): under xdist they start first, so no worker is
# left with one of them at the end while the other idles. Files not named keep their order after these; a file missing here only costs
# balance (the example and parity files are new: estimated).
LONGEST_FIRST = ["test_ops.py", "test_rpc.py", "test_distributed_mpi.py", "test_symbolic_models.py",
                 "test_example_char.py", "test_example_resnet.py", "test_tune_interrupt.py", "test_tune.py", "test_arm.py",
                 "test_training.py", "test_symbolic_ops.py", "test_parity_adamw.py",
                 "test_parity_char_lm.py", "test_parity_resnet.py", "test_attention_torch.py",
                 "test_examples.py", "test_attention.py", "test_cache.py", "test_tune_symbolic.py",
                 "test_schedule.py", "test_random.py", "test_qat.py", "test_pruning.py",
                 "test_deploy_cpp.py", "test_fake_quant.py"]


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
