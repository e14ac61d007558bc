"""Find the input images: a folder searched recursively, or a Parquet dataset with id and bytes columns.

Local paths and any URI that fsspec/pyarrow read (s3://...) take one code path. An image's id is its
path relative to the folder (POSIX separators), or the id column's value: stable across runs, so
resume and seeds do not depend on listing order.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

import fsspec

from pipeline.folder import storage

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)


# Items listed at a time (a Parquet scan's batch; a folder's directory, cut to this).
BATCH_ITEMS = 1 << 16


class InputError(ValueError):
    """The input cannot be used at all (missing, empty, wrong columns)."""


@dataclass(frozen=True)
class InputItem:
    """One input image. `source` is a readable URI for folder inputs, "" for Parquet rows.

    `problem` is the reason code (pipeline.tables.row_errors) of an input that is known bad before reading (a name
    that is not UTF-8, a duplicate id): it still gets its rows in the manifest, with that error.
    `size` and `mtime` (folder inputs) tell a rerun whether a failed file has been replaced since.
    """

    image_id: str
    source: str
    problem: str | None = None
    size: int | None = None
    mtime: float | None = None


@dataclass(frozen=True)
class InputSet:
    """The inputs of a job: a folder listing, or a Parquet dataset and its ids."""

    kind: str  # "folder" | "parquet"
    uri: str
    items: tuple[InputItem, ...]
    id_column: str = "id"
    image_column: str = "image"


def discover(
    uri: str, *, id_column: str = "id", image_column: str = "image", exclude: str | os.PathLike | None = None
) -> InputSet:
    """List the images under `uri` (a folder) or the ids of a Parquet dataset at `uri`, all in one list (a job
    streams them instead: `describe`, then `input_batches`; pipeline.execution.discovery).

    `exclude` is a folder never descended into: the job's own --out, when it lies inside the input.
    """
    inputs = describe(uri, id_column=id_column, image_column=image_column, exclude=exclude)
    if inputs.kind == "folder":  # in path order, as ever (batches come a folder at a time)
        fs, root = fsspec.core.url_to_fs(uri)
        entries = sorted(_folder_entries(fs, root.rstrip("/"), exclude))
        return replace(inputs, items=tuple(_folder_item(fs, root, path, info) for path, info in entries))
    items = [item for batch, _ in input_batches(inputs) for item in batch]
    return replace(inputs, items=tuple(items))


def describe(
    uri: str, *, id_column: str = "id", image_column: str = "image", exclude: str | os.PathLike | None = None
) -> InputSet:
    """The input at `uri` checked (it exists, is a folder with an image or a Parquet dataset with rows and
    these columns), without its items: InputError, in one line, when it cannot be used."""
    try:
        fs, root = fsspec.core.url_to_fs(uri)
        if storage.is_url(uri):
            storage.check_reachable(storage.locate(uri))
    except storage.StorageError as err:
        raise InputError(f"input {err}") from None
    except (ValueError, ImportError) as err:
        raise InputError(f"cannot open input {uri!r}: {err}") from None
    if not fs.exists(root):
        raise InputError(f"input {uri!r} does not exist")
    if _is_parquet(fs, root):
        dataset = _parquet_dataset(uri, fs, root, id_column, image_column)
        if not dataset.count_rows():
            raise InputError(f"Parquet input {uri!r} has no rows")
        return InputSet("parquet", uri, (), id_column, image_column)
    if not fs.isdir(root):
        raise InputError(f"input {uri!r} is neither a folder of images nor a Parquet dataset")
    if next(_folder_entries(fs, root.rstrip("/"), exclude), None) is None:
        raise InputError(f"no images found under {uri!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return InputSet("folder", uri, ())


def input_batches(
    inputs: InputSet, exclude=None, *, label_column: str | None = None, size: int = BATCH_ITEMS
) -> Iterator[tuple[list[InputItem], list | None]]:
    """The items of a described input, at most `size` at a time: a folder's a directory at a time (each in
    name order), a Parquet dataset's in row order; with `label_column` (Parquet), each item's value of it."""
    fs, root = fsspec.core.url_to_fs(inputs.uri)
    if inputs.kind == "parquet":
        yield from _parquet_batches(inputs, fs, root, label_column, size)
        return
    batch: list[InputItem] = []
    for path, info in _folder_entries(fs, root.rstrip("/"), exclude):
        batch.append(_folder_item(fs, root, path, info))
        if len(batch) >= size:
            yield batch, None
            batch = []
    if batch:
        yield batch, None


def identity_labels(inputs: InputSet, identity_from: str | None, identity_column: str | None) -> dict[str, str]:
    """image_id -> who is in the image (sensitive: for private/ only), where the user said how to know.

    `identity_from="folder"`: the parent folder of a folder input's image (none for images at the top);
    `identity_column`: a column of a Parquet input.
    """
    if identity_from == "folder":
        labels = {}
        for item in inputs.items:
            parent = PurePosixPath(item.image_id).parent.as_posix()
            if parent != ".":
                labels[item.image_id] = parent
        return labels
    if identity_column:
        if inputs.kind != "parquet":
            raise InputError("--identity-column needs a Parquet input; for a folder pass --identity-from folder")
        import pyarrow.dataset as pads

        fs, root = fsspec.core.url_to_fs(inputs.uri)
        dataset = pads.dataset(root, filesystem=fs, format="parquet")
        if identity_column not in dataset.schema.names:
            raise InputError(f"Parquet input has no column {identity_column!r}; pass --identity-column")
        table = dataset.to_table(columns=[inputs.id_column, identity_column])
        ids = [str(v) for v in table.column(inputs.id_column).to_pylist()]
        names = table.column(identity_column).to_pylist()
        return {i: str(n) for i, n in zip(ids, names, strict=True) if n is not None}
    return {}


def _is_parquet(fs, root: str) -> bool:
    if root.endswith(".parquet") or root.endswith(".pq"):
        return True
    if fs.isdir(root):
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
        files = [n for n in names if not n.startswith((".", "_"))]
        return bool(files) and all(n.endswith((".parquet", ".pq")) for n in files)
    return False


def _excluded_prefix(exclude, local: bool) -> str | None:
    """The prefix of paths under `exclude` as `fs.find` names them (a local folder, or an object-store URL's
    bucket/key), when it is on the input's kind of store."""
    if exclude is None or storage.is_local(exclude) != local:
        return None
    return (os.path.realpath(exclude) if local else exclude.path).rstrip("/") + "/"


def _folder_entries(fs, root: str, exclude) -> Iterator[tuple[str, dict]]:
    """(path, info) of each image file under `root`, a directory at a time (fs.walk, which `fs.find` uses:
    it does not follow symlinks, so a symlink loop cannot trap it), skipping `exclude`."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    local = protocol in ("file", "local")
    skip = _excluded_prefix(exclude, local)
    for _, _, files in fs.walk(root, detail=True):
        for info in sorted(files.values(), key=lambda i: i["name"]):
            path = info["name"]
            if skip and (os.path.realpath(path) if local else path).startswith(skip):
                continue
            name = path.rsplit("/", 1)[-1]
            dot = name.rfind(".")
            if dot >= 0 and name[dot:].lower() in IMAGE_EXTENSIONS:
                yield path, info


def _folder_item(fs, root: str, path: str, info: dict) -> InputItem:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    rel = path[len(root.rstrip("/")) + 1 :]
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        safe = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return InputItem(safe, "", problem="bad_name")
    return InputItem(rel, prefix + path, size=info.get("size"), mtime=_mtime(info))


def _parquet_dataset(uri: str, fs, root: str, id_column: str, image_column: str):
    import pyarrow as pa
    import pyarrow.dataset as pads

    try:
        dataset = pads.dataset(root, filesystem=fs, format="parquet")
    except Exception as err:  # pyarrow raises several types for unreadable datasets
        raise InputError(f"cannot read Parquet input {uri!r}: {err}") from None
    names = dataset.schema.names
    for column, flag in ((id_column, "--id-column"), (image_column, "--image-column")):
        if column not in names:
            raise InputError(
                f"Parquet input {uri!r} has no column {column!r} (columns: {', '.join(names)}); pass {flag}"
            )
    kind = dataset.schema.field(image_column).type
    binary = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary, pa.types.is_binary_view)
    if not any(test(kind) for test in binary):
        raise InputError(
            f"Parquet input {uri!r}: column {image_column!r} holds {kind}, not encoded image bytes (binary); "
            "pass --image-column naming the column of PNG/JPEG bytes"
        )
    return dataset


def _parquet_batches(inputs: InputSet, fs, root: str, label_column: str | None, size: int):
    """The ids in row order. Which twin of a duplicated id is "the" image is ambiguous (and would share an
    output name and seed), so every occurrence becomes its own error row rather than one silently winning."""
    dataset = _parquet_dataset(inputs.uri, fs, root, inputs.id_column, inputs.image_column)
    columns = [inputs.id_column] + ([label_column] if label_column else [])
    twins = _duplicated_ids(dataset, inputs.id_column)
    seen: Counter[str] = Counter()
    for batch in dataset.to_batches(columns=columns, batch_size=size):
        ids = [str(v) for v in batch.column(0).to_pylist()]
        items = []
        for image_id in ids:
            if image_id not in twins:
                items.append(InputItem(image_id, ""))
                continue
            seen[image_id] += 1
            items.append(InputItem(f"{image_id}#{seen[image_id]}", "", problem="duplicate_id"))
        if items:
            yield items, batch.column(1).to_pylist() if label_column else None


def _duplicated_ids(dataset, id_column: str) -> set[str]:
    """The ids that occur more than once, with 8 bytes per row held (a hash): only the ids whose hash repeats
    are then counted exactly, in a second scan."""
    import hashlib

    import numpy as np

    def hashes(batch) -> np.ndarray:
        ids = (str(v).encode() for v in batch.column(0).to_pylist())
        digest = (hashlib.blake2b(i, digest_size=8).digest() for i in ids)
        return np.frombuffer(b"".join(digest), dtype=np.uint64)

    found = [hashes(b) for b in dataset.to_batches(columns=[id_column], batch_size=BATCH_ITEMS)]
    every = np.sort(np.concatenate(found)) if found else np.empty(0, np.uint64)
    repeated = set(every[1:][every[1:] == every[:-1]].tolist())
    del found, every
    if not repeated:
        return set()
    counts: Counter[str] = Counter()
    for batch in dataset.to_batches(columns=[id_column], batch_size=BATCH_ITEMS):
        marks = hashes(batch).tolist()
        counts.update(str(v) for v, h in zip(batch.column(0).to_pylist(), marks, strict=True) if h in repeated)
    return {i for i, n in counts.items() if n > 1}


def _mtime(info: dict) -> float | None:
    value = info.get("mtime", info.get("LastModified"))
    if hasattr(value, "timestamp"):
        value = value.timestamp()
    return float(value) if isinstance(value, (int, float)) else None


def read_bytes(source: str) -> bytes:
    """Read one input file through fsspec (local path or URI)."""
    with fsspec.open(source, "rb") as handle:
        return handle.read()
