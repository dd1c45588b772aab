"""Test-session environment: builds cache into a temporary folder, never the user's.

The compile cache (tvmfront.cache) would otherwise read and fill ~/.cache/tvmfront/modules:
a run must not depend on what an earlier run (or the user) left there. Tests that check the
cache itself point TVMFRONT_CACHE_DIR at their own folders. A folder the caller set is kept
(to reuse builds between local runs: TVMFRONT_CACHE_DIR=... pytest).

Eager kernels (every op test, gradcheck, opcheck) are built with bound checks
(TVMFRONT_BOUND_CHECKS=1, see tvmfront/boundcheck.py): a read outside a buffer raises
OutOfBoundsError instead of passing garbage on. TVMFRONT_BOUND_CHECKS=0 pytest turns them off.
"""

import os
import shutil
import tempfile

_made = None
if not os.environ.get("TVMFRONT_CACHE_DIR"):
    _made = tempfile.mkdtemp(prefix="tvmfront-test-cache-")
    os.environ["TVMFRONT_CACHE_DIR"] = _made  # subprocesses (examples, reloads) inherit it


os.environ.setdefault("TVMFRONT_BOUND_CHECKS", "1")


def pytest_sessionfinish(session, exitstatus):
    if _made:
        shutil.rmtree(_made, ignore_errors=True)
