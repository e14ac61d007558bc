"""Find the input images: a folder searched recursively, or a Parquet dataset with id and bytes columns.

Local paths and any URI that fsspec/pyarrow read (s3://...) take one code path. An image's id is its
path relative to the folder (POSIX separators), or the id column's value: stable across runs, so
resume and seeds do not depend on listing order.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec

from pipeline.folder import storage

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)


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
    """List the images under `uri` (a folder) or the ids of a Parquet dataset at `uri`.

    `exclude` is a folder never descended into: the job's own --out, when it lies inside the input.
    """
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
        return _discover_parquet(uri, fs, root, id_column, image_column)
    if not fs.isdir(root):
        raise InputError(f"input {uri!r} is neither a folder of images nor a Parquet dataset")
    items = _discover_folder(uri, fs, root, exclude)
    if not items:
        raise InputError(f"no images found under {uri!r} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return InputSet("folder", uri, tuple(items))


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


def _discover_folder(uri: str, fs, root: str, exclude) -> list[InputItem]:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    local = protocol in ("file", "local")
    prefix = "" if local else f"{protocol}://"
    root = root.rstrip("/")
    skip = _excluded_prefix(exclude, local)
    items = []
    # fs.find walks without following symlinks, so a symlink loop cannot trap it.
    found = fs.find(root, detail=True)
    for path in sorted(found):
        if skip and (os.path.realpath(path) if local else path).startswith(skip):
            continue
        name = path.rsplit("/", 1)[-1]
        dot = name.rfind(".")
        if dot < 0 or name[dot:].lower() not in IMAGE_EXTENSIONS:
            continue
        rel = path[len(root) + 1 :]
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            safe = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            items.append(InputItem(safe, "", problem="bad_name"))
            continue
        info = found[path]
        items.append(InputItem(rel, prefix + path, size=info.get("size"), mtime=_mtime(info)))
    return items


def _discover_parquet(uri: str, fs, root: str, id_column: str, image_column: str) -> InputSet:
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
    ids = [str(v) for v in dataset.to_table(columns=[id_column]).column(id_column).to_pylist()]
    if not ids:
        raise InputError(f"Parquet input {uri!r} has no rows")
    counts = Counter(ids)
    items = []
    seen: Counter[str] = Counter()
    for image_id in ids:
        if counts[image_id] == 1:
            items.append(InputItem(image_id, ""))
            continue
        # Which twin is "the" image is ambiguous (and would share an output name and seed), so every
        # occurrence becomes its own error row rather than one silently winning.
        seen[image_id] += 1
        items.append(InputItem(f"{image_id}#{seen[image_id]}", "", problem="duplicate_id"))
    return InputSet("parquet", uri, tuple(items), id_column, image_column)


def _mtime(info: dict) -> float | None:
    value = info.get("mtime", info.get("LastModified"))
    if hasattr(value, "timestamp"):
        value = value.timestamp()
    return float(value) if isinstance(value, (int, float)) else None


def read_bytes(source: str) -> bytes:
    """Read one input file through fsspec (local path or URI)."""
    with fsspec.open(source, "rb") as handle:
        return handle.read()
