"""Shared by the tuning tests: a private compile cache per test module, and a tiny MLP."""

import pytest

import tvmfront as tvf


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    """Builds and tune logs of the module's tests in their own folder; no progress lines."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVMFRONT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("TVMFRONT_PROGRESS", "0")
        yield


def mlp():
    tvf.manual_seed(0)
    return tvf.nn.Sequential(tvf.nn.Linear(16, 32), tvf.nn.ReLU(), tvf.nn.Linear(32, 4))
