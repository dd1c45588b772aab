"""Tuning records, public names: the store (tvmfront.tuning.store), merging
(tvmfront.tuning.merge) and which records a build applies (tvmfront.tuning.policy).

    tvmfront.records.merge("from-laptop/", "~/.cache/tvmfront/schedules")   # root into root
    tvmfront.records.select(None, "x86").sources     # the folders a build for x86 reads
"""

from .tuning.merge import merge
from .tuning.policy import (NOISE_FLOOR_US, NOISE_REL, ROOT, Selection, defaults_digest, judge,
                            select, set_kernel_results, shipped_root, sources, user_root)
from .tuning.store import (FAILED_SECONDS, META, RECORDS, WORKLOADS, Database, RecordsError,
                           RecordsWarning, best_only, core_class, for_key, is_database, kind,
                           mean_seconds, read, record_key, store_for, store_key, write,
                           write_meta)

# Names older callers use (bench/_peer_tvmfront.py, tests/test_targets.py).
record_target_key = record_key


def default_root():
    """The records root tvf.tune writes by default: the user store. Builds read more than
    this root (the shipped records under it): see sources(None) and select(None, target)."""
    return user_root()


__all__ = [
    "FAILED_SECONDS", "META", "NOISE_FLOOR_US", "NOISE_REL", "RECORDS", "ROOT", "WORKLOADS",
    "Database", "RecordsError", "RecordsWarning", "Selection", "best_only", "core_class",
    "defaults_digest", "for_key", "is_database", "judge", "kind", "mean_seconds", "merge",
    "read", "record_key", "select", "set_kernel_results", "shipped_root", "sources",
    "store_for", "store_key", "user_root", "write", "write_meta", "default_root",
    "record_target_key",
]
