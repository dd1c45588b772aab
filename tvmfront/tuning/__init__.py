"""Tuning: MetaSchedule search over a compiled module's kernels, and the records it keeps.

    tasks      the distinct kernels of a module and their calls per step
    symbolic   kernels with symbolic dimensions: tuned specialized, records carried over
    measure    timing kernels alone (default schedules vs records) and whole calls
    search     MetaSchedule's search under a budget, tvmfront's task order
    interrupt  Ctrl-C while tuning
    remote     measuring on other machines over TVM RPC
    store      the record files: key, read, write, lock
    merge      merging record databases and roots
    policy     which records a build applies: where stores live, read order, verdicts
    run        tvf.tune itself

``tvf.tune`` (``tuning.run.tune``) is the public entry; ``tvmfront.records`` and
``tvmfront.rpc`` re-export the store's and remote measurement's public names.
"""

_PUBLIC = {"tune": "run", "TuneReport": "run", "TuneProgress": "search",
           "time_module": "measure"}


def __getattr__(name):
    # Lazy: tvmfront.build reads records through tuning.policy, and tuning.run imports build.
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
