"""Shared by the tuning tests: a private compile cache per test module, a tiny MLP, and a
copy of a store whose records all apply."""

import json
import os
import shutil

import pytest

import tvmfront as tvf
from tvmfront import records


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


def store_without_verdicts(root, dest):
    """A copy of the records root `root` whose records all apply (tune keeps a record measured
    slower than the default schedule out of builds; these tests need records that apply)."""
    shutil.copytree(root, dest)
    meta_path = os.path.join(dest, records.store_key("x86"), records.META)
    meta = json.load(open(meta_path))
    meta.pop("kernels", None)
    json.dump(meta, open(meta_path, "w"))
    return dest
