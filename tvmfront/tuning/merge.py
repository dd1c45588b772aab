"""Merging records: from other machines of the same key, or a tuning run into its store.

    merge(database, database)   the records of src made for dst's key (as tuning does)
    merge(database, root)       into root/<key> for each store key of src's records
    merge(root, root)           every per-key folder of src into the same key under dst
    merge(root, database)       refused: a database holds one key (name src's key folder)

A missing or empty dst takes src's shape. The best valid record of every workload is kept;
dst's workloads keep their indices (new ones are appended), every file is replaced
atomically, under the store's lock.
"""

import os
import shutil

from .. import _files
from . import store
from .store import Database, RecordsError, best_only, for_key, mean_seconds, record_key


def merge(src, dst, target=None):
    """Merge the tuning records of `src` into `dst` (each a database folder or a records
    root, see the module docstring); returns how many workloads got a new or faster record.

    target: dst's target (a name, dict or Target), for a database dst: records of src made
    for another store key are skipped with a warning. Without it, the key recorded in dst
    (or, for a new store, src's own) decides. A corrupt src file is skipped with a warning
    (0 merged); a corrupt dst file is moved aside (``*.corrupt-<time>``), never deleted.
    RecordsError when src is missing, the combination makes no sense, or dst cannot be locked.
    """
    src, dst = os.path.abspath(os.fspath(src)), os.path.abspath(os.fspath(dst))
    src_kind, dst_kind = store.kind(src), store.kind(dst)
    if not os.path.exists(src):
        raise RecordsError(f"merge: {src} does not exist (nothing to merge)")
    for path, k in ((src, src_kind), (dst, dst_kind)):
        if k == "other":
            raise RecordsError(f"merge: {path} is neither a records database (a folder with "
                               f"{store.WORKLOADS} and {store.RECORDS}) nor a records root "
                               f"(a folder of such folders, one per store key)")
    if src_kind == "empty":
        return 0
    if src_kind == "root":
        if dst_kind == "database":
            raise RecordsError(f"merge: {src} is a records root (one folder per store key) and "
                               f"{dst} one database (one key): merging would mix keys; merge "
                               f"{src}/<key> into {dst}, or {src} into a records root")
        if target is not None:
            raise RecordsError("merge: target= applies to a database destination; a root "
                               "keeps every key in its own folder")
        return sum(merge_folder(os.path.join(src, d), os.path.join(dst, d), key=d)
                   for d in sorted(os.listdir(src))
                   if store.is_database(os.path.join(src, d)))
    if dst_kind == "root":
        return _merge_into_root(src, dst, target)
    return merge_folder(src, dst, target=target)


def _merge_into_root(src, root, target):
    db = store.read(src)
    if db is None:
        return 0
    keys = {}
    for w, rec in db.records:
        keys.setdefault(record_key(rec[2]), []).append((w, rec))
    if target is not None:
        keys = {k: v for k, v in keys.items() if k == store.store_key(target)}
    bad = keys.pop(None, [])
    if bad:
        store.warning(f"{len(bad)} tuning record(s) in {src} name a target this TVM cannot "
                      f"parse: not merged")
    changed = 0
    for key, recs in sorted(keys.items()):
        part = Database(db.workloads, recs, dict(db.meta, target_key=key), db.path)
        changed += _merge_db(part, src, os.path.join(root, key), key=key)
    return changed


def merge_folder(src, dst, key=None, target=None):
    """Merge the database folder `src` into the database folder `dst` (tuning's save)."""
    db = store.read(src)
    if db is None:
        return 0
    return _merge_db(db, src, dst, key=key, target=target)


def _merge_db(src_db, src_name, dst_dir, key=None, target=None):
    """Merge the Database `src_db` into the database folder `dst_dir` (under its lock)."""
    with store.locked(dst_dir):
        _files.remove_stale_temporaries(dst_dir)  # what killed merges left
        dst = store.read(dst_dir, warn=False) if store.is_database(dst_dir) else Database()
        if dst is None:
            stamp = _set_aside(dst_dir, "corrupt", os.replace)
            store.warning(f"corrupt tuning records in {dst_dir} were moved aside "
                          f"(*.corrupt-{stamp}); the store starts again from the merged records")
            dst = Database()
        meta = dict(dst.meta)
        if target is not None:
            meta.update(store.meta_of(target))
            key = meta["target_key"]
        else:
            key = key or dst.meta.get("target_key") or src_db.meta.get("target_key")
            if key is None and src_db.records:
                key = record_key(src_db.records[0][1][2])
            for k, v in src_db.meta.items():
                if k != "kernels":  # src's verdicts were judged against src's records
                    meta.setdefault(k, v)
            meta["target_key"] = key
        dst = _without_foreign_records(dst, dst_dir, key)
        mine, others = for_key(src_db, key)
        if others:
            store.warning(f"{sum(others.values())} tuning record(s) in {src_name} were made for "
                          f"another target ({', '.join(sorted(others))}) and are not merged "
                          f"into {dst_dir} ({key})")
        # dst keeps every workload at its index (best_records, not best_only): its workload
        # file is only ever appended to, so a reader between the two renames stays consistent.
        merged, changed = _best_of(store.best_records(dst), best_only(mine))
        meta["updated"] = store.stamp()
        store.write(dst_dir, merged, meta)
    return changed


def _without_foreign_records(dst, dst_dir, key):
    """dst with only its records for `key`. Another target's record in a key's folder (copied
    in by hand) never applies to a build, but it took part in the comparison: a faster one
    made tuning keep nothing, silently. The files as they were are kept aside."""
    own, others = for_key(dst, key)
    if not others:
        return dst
    stamp = _set_aside(dst_dir, "foreign", shutil.copy2)
    store.warning(f"{sum(others.values())} tuning record(s) in {dst_dir} were made for another "
                  f"target ({', '.join(sorted(others))}), not this folder's {key}: builds never "
                  f"apply them, and they hid this target's records from the merge; the folder "
                  f"keeps {key}'s records only (the files as they were: *.foreign-{stamp})")
    return own


def _set_aside(dst_dir, why, how):
    """The store's files in dst_dir moved (how=os.replace) or copied (shutil.copy2) to
    `<file>.<why>-<time>`; the time stamp."""
    stamp = store.stamp()
    for name in (store.WORKLOADS, store.RECORDS, store.META):
        p = os.path.join(dst_dir, name)
        if os.path.exists(p):
            how(p, f"{p}.{why}-{stamp}")
    return stamp


def _best_of(dst, src):
    """dst's workloads keep their indices (new ones are appended); best record per workload."""
    workloads = list(dst.workloads)
    index = {h: i for i, (h, _) in enumerate(workloads)}
    best = {w: rec for w, rec in dst.records}
    changed = 0
    for w, rec in src.records:
        h, ir = src.workloads[w]
        if h not in index:
            index[h] = len(workloads)
            workloads.append((h, ir))
        i = index[h]
        if i not in best or mean_seconds(rec) < mean_seconds(best[i]):
            changed += best.get(i) != rec
            best[i] = rec
    return Database(workloads, [(i, best[i]) for i in sorted(best)]), changed
