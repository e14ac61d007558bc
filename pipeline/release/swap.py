"""release/: a namespace of its own, built aside and swapped in whole.

Released names are keyed apart from the internal anon_ids: a second HMAC under a key derived from the run's
secret with its own label, over the anon_id. The same secret gives the same names on every rerun; without it,
no internal table (manifest, distances, attacks, a leaked private/ mapping table) joins to release/ by name.
private/released.parquet keeps the mapping (anon_id -> release_id).

The folder is written into a staging folder beside it, every file synced, and swapped in by two renames
(the old one moved away, the new one moved in, the old one removed), so a crash leaves the old release or
the new one, never a truncated one. An object store has no renames (see `staged_folder`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import uuid
from collections.abc import Iterator

from evaluation.files import fsync_folder
from pipeline.folder import storage
from pipeline.folder.layout import OutputError, RunLayout
from pipeline.folder.secret import parse_secret
from pipeline.folder.storage import Location

# The label that sets release names apart from every other use of the run's secret.
RELEASE_LABEL = b"boomerang/release-name/v1"
STAGING = ".staging-"
OLD = ".old-"


def release_key(layout: RunLayout, secret: bytes | None = None) -> bytes:
    """The key of release names, derived from the run's secret (read from private/ when not given)."""
    if secret is None:
        path = layout.secret_file
        if not path.exists():
            raise OutputError(f"{layout.root} has no private/secret: release names cannot be derived without it")
        secret = parse_secret(path.read_text(encoding="ascii", errors="replace"), f"{path}")
    return hmac.new(secret, RELEASE_LABEL, hashlib.sha256).digest()


def release_name(key: bytes, anon_id: str) -> str:
    """An output's name in release/: unlinkable to its anon_id without the secret, stable with it."""
    return hmac.new(key, anon_id.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def copy_synced(source: Location, target: Location) -> None:
    """Copy one file into a staged folder: synced locally (storage's writer fsyncs file and folder), a
    server-side copy within one object store (an object lands whole or not at all)."""
    if storage.is_local(target):
        storage.write_bytes(target, source.read_bytes())
    else:
        storage.copy_file(source, target)


def remove_leftovers(target: Location) -> None:
    """Staging and old folders a crashed build left beside `target` (never read; removed before a build)."""
    parent = target.parent
    if storage.is_local(target) and not parent.is_dir():
        return
    for prefix in (f"{target.name}{STAGING}", f"{target.name}{OLD}"):
        for path in parent.glob(f"{prefix}*"):
            storage.remove_tree(path)


@contextlib.contextmanager
def staged_folder(target: Location) -> Iterator[Location]:
    """Yield a fresh staging folder beside `target`; when the block ends without an exception it replaces
    `target` whole, and when it raises, `target` is left as it was and the staging folder is removed.

    Locally: rename the old folder away, rename the staged one in, fsync the parent, remove the old one (a
    crash between the two renames leaves no release/ and the old one beside it, never a mixed or truncated
    one). On an object store there is no rename of a prefix: the staged objects are copied over server-side,
    the objects the new release does not hold are deleted FIRST (a withdrawn image must not outlive a crash),
    and the manifest is copied last; each object lands whole, but a reader during the copy may see a mix.
    """
    remove_leftovers(target)
    staging = target.with_name(f"{target.name}{STAGING}{uuid.uuid4().hex}")
    storage.make_dirs(staging)
    try:
        yield staging
        if storage.is_local(target):
            _swap_local(staging, target)
        else:
            _sync_store(staging, target)
    finally:
        storage.remove_tree(staging)


def _swap_local(staging, target) -> None:
    old = target.with_name(f"{target.name}{OLD}{uuid.uuid4().hex}")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    fsync_folder(target.parent)
    storage.remove_tree(old)


def _sync_store(staging, target) -> None:
    new = {p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()}
    if target.exists():
        for path in [p for p in target.rglob("*") if p.is_file()]:
            if path.relative_to(target).as_posix() not in new:
                storage.remove_tree(path)
    # The manifest last: it names only files that are already there.
    for name in sorted(new, key=lambda n: (n == "manifest.parquet", n)):
        storage.copy_file(staging / name, target / name)
