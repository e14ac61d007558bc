"""Where a run's files live: a local (or mounted) folder, or an object store through fsspec.

A local location is a `pathlib.Path`; a URL (s3://, gs://, abfs://, ...) is a `upath.UPath` over the fsspec
filesystem of its scheme, with the same `/`, `glob`, `exists`, `read_bytes` the rest of the pipeline uses.
What differs is here, in one place:

- A file is written whole or not at all. Locally: a hidden temporary file in the same folder, fsync, rename,
  fsync of the folder. On an object store a PUT publishes the object only once the upload completes, so the
  write itself is the commit (no rename, which object stores lack, is needed).
- Private files are 0600 from creation locally, their folders 0700. The run folder itself is made 0700 and
  every other file 0640, folder 0750 (umask may only narrow these): nothing of a run is readable by other
  users, and `chmod g+rx OUT` shares all but `private/` with the folder's group (docs/privacy.md). An
  object store has no file modes: who reads the run is the bucket's access policy (docs/reliability.md).
- Folders exist only locally; on an object store a "folder" is a key prefix and needs no creating.
- Listings are never cached: parts written by workers on other nodes must show up in the driver's next
  listing (fsspec's default listing cache would hide them).
- Object-store credentials and endpoints come from each node's environment (AWS_*, GOOGLE_*, instance roles,
  fsspec configuration), never from flags: nothing secret is pickled to workers or recorded in run.json.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, TypeAlias, Union

import pyarrow as pa
import pyarrow.parquet as pq

from evaluation.files import write_atomic

if TYPE_CHECKING:
    from upath import UPath

# A local folder, or an object-store URL (upath is imported only where a URL is given).
Location: TypeAlias = Union[Path, "UPath"]  # noqa: UP007 - a string member needs Union on Python 3.10


class StorageError(ValueError):
    """A location that cannot be used (no filesystem for its scheme, malformed URL)."""


def is_url(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def locate(text: str) -> Location:
    """The location `text` names: an absolute local `Path`, or a `UPath` for a URL."""
    if not is_url(text):
        return Path(text.removeprefix("file://")).expanduser().resolve()
    if "@" in text.split("://", 1)[1].split("/", 1)[0]:
        raise StorageError(
            f"{text.split('://', 1)[0]}://...: a URL with credentials in it would be printed and recorded; "
            "give them in the environment (AWS_ACCESS_KEY_ID, ..., or the store's config file) instead"
        )
    from upath import UPath

    try:
        return UPath(text, use_listings_cache=False)
    except (ImportError, ValueError) as err:  # no fsspec implementation installed for the scheme
        scheme = text.split("://", 1)[0]
        raise StorageError(
            f"{text!r}: cannot open {scheme}:// ({err}); install its fsspec package (s3fs, gcsfs, adlfs)"
        ) from None


def check_reachable(path: Location) -> None:
    """Raise StorageError, in one line, when the store behind a URL cannot be used: no such bucket, access
    denied, or nothing answering at the endpoint. A local path is not checked (its folder is created)."""
    if is_local(path):
        return
    bucket = path.path.split("/", 1)[0]
    where = f"{path.protocol}://{bucket}"
    try:
        path.fs.info(bucket)
    except FileNotFoundError:
        raise StorageError(f"{where}: no such bucket; check the name (an --out bucket must exist first)") from None
    except PermissionError as err:
        raise StorageError(f"{where}: access denied ({_first_line(err)}); check the credentials") from None
    except Exception as err:  # noqa: BLE001 - every client raises its own kinds for an unreachable store
        raise StorageError(
            f"cannot reach {where}: {_first_line(err)}; check the endpoint (e.g. AWS_ENDPOINT_URL), the network "
            "and the credentials in this node's environment"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def is_local(path: Location | str) -> bool:
    return isinstance(path, (PurePath, str))


# Local modes (see the module's docstring); the process umask may narrow them, never widen.
FILE_MODE, FOLDER_MODE = 0o640, 0o750
PRIVATE_FILE_MODE, PRIVATE_FOLDER_MODE = 0o600, 0o700
RUN_FOLDER_MODE = 0o700


def _make_parents(folder: Path, mode: int) -> None:
    """`mkdir -p` with `mode` for each folder it makes (pathlib gives missing parents the umask's default)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another worker made it first
            each.mkdir(mode=mode)


def make_run_folder(folder: Location) -> None:
    """Create a run's folder 0700 if it is not there (its missing parents as `mkdir -p` would); a folder that
    exists keeps the mode its owner gave it. Nothing on an object store."""
    if is_local(folder) and not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=RUN_FOLDER_MODE)


def write_bytes(path: Location, data: bytes, *, private: bool = False) -> None:
    """Write `path` whole or not at all (see the module's docstring); 0600 with `private`, else 0640 locally."""
    if not is_local(path):
        path.fs.pipe_file(path.path, data)
        return
    _make_parents(path.parent, PRIVATE_FOLDER_MODE if private else FOLDER_MODE)
    write_atomic(path, data, mode=PRIVATE_FILE_MODE if private else FILE_MODE)


def write_text(path: Location, text: str, *, private: bool = False) -> None:
    write_bytes(path, text.encode(), private=private)


def table_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue().to_pybytes()


def write_table(
    table: pa.Table, path: Location, *, private: bool = False, row_group_size: int | None = None, durable: bool = True
) -> None:
    """A Parquet file, written like `write_bytes` (`row_group_size`: rows per row group, for range reads).
    `durable=False`: a file the next run makes again, renamed into place whole but not synced to disk."""
    data = table_bytes(table, row_group_size)
    if durable or not is_local(path):
        write_bytes(path, data, private=private)
        return
    _make_parents(path.parent, PRIVATE_FOLDER_MODE if private else FOLDER_MODE)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE if private else FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def write_table_batches(
    tables: Iterable[pa.Table], path: Location, schema: pa.Schema, *, private: bool = False
) -> None:
    """A Parquet file written a table at a time (one row group or more each), never held whole: locally through a
    temporary file renamed into place, like `write_bytes` (an exception from `tables` leaves the old file);
    on an object store through one upload of the file's bytes."""

    def write(handle) -> None:
        with pq.ParquetWriter(handle, schema) as writer:
            for table in tables:
                writer.write_table(table.cast(schema))

    if not is_local(path):
        sink = pa.BufferOutputStream()
        write(sink)
        path.fs.pipe_file(path.path, sink.getvalue().to_pybytes())
        return
    _make_parents(path.parent, PRIVATE_FOLDER_MODE if private else FOLDER_MODE)
    write_atomic(path, write, mode=PRIVATE_FILE_MODE if private else FILE_MODE)


def _arrow(path: Location) -> dict:
    return {"source": path} if is_local(path) else {"source": path.path, "filesystem": path.fs}


def read_table(path: Location, **options) -> pa.Table:
    """`pyarrow.parquet.read_table` of a file (or a folder of parts) at `path`."""
    return pq.read_table(**_arrow(path), **options)


def parquet_file(path: Location) -> pq.ParquetFile:
    if is_local(path):
        return pq.ParquetFile(path)
    return pq.ParquetFile(path.path, filesystem=path.fs)


def read_schema(path: Location) -> pa.Schema:
    return parquet_file(path).schema_arrow


def make_dirs(*folders: Location, private: bool = False) -> None:
    """Create local folders (0750, or 0700 with `private`, also when they already existed); nothing on an
    object store."""
    for folder in folders:
        if not is_local(folder):
            continue
        if not private:
            _make_parents(folder, FOLDER_MODE)
            continue
        folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=PRIVATE_FOLDER_MODE)
        os.chmod(folder, PRIVATE_FOLDER_MODE)  # an existing folder from an older run, or one made under a loose umask


def remove_tree(path: Location) -> None:
    """Delete a folder (a key prefix) or a file, if there."""
    if is_local(path):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        return
    with contextlib.suppress(FileNotFoundError):
        path.fs.rm(path.path, recursive=True)


def copy_file(source: Location, target: Location) -> None:
    """Copy one file whole (server-side where both are in one store)."""
    if is_local(source) and is_local(target):
        _make_parents(target.parent, FOLDER_MODE)
        with open(source, "rb") as reader:  # FILE_MODE, not the source's mode
            write_atomic(target, lambda writer: shutil.copyfileobj(reader, writer), mode=FILE_MODE)
    elif not is_local(source) and not is_local(target) and source.protocol == target.protocol:
        source.fs.copy(source.path, target.path)
    else:
        write_bytes(target, source.read_bytes())


def version(path: Location):
    """Something that changes when the file at `path` is rewritten (None if there is none)."""
    try:
        if is_local(path):
            return path.stat().st_mtime_ns
        info = path.fs.info(path.path)
    except FileNotFoundError:
        return None
    return info.get("ETag") or info.get("etag") or info.get("md5Hash") or (info.get("mtime"), info.get("size"))
