"""Every table a run folder holds, declared once: where it lives, its schema, and each column public or private.

The public surface of a run is what is written outside `private/`. It is listed here and nowhere else:
`pipeline.tables.write.write_public_table` looks the table up by where it is written and refuses, in code, a table
that is not declared, a column that is not declared public, a nested column (boxes, embeddings), and a string value
that does not have its column's declared form (pipeline.tables.public_surface) (a reason code and a fixed text for
an error, a 24-hex pseudonym for an id, `images/level=.../<hex>.png` for an output) or that looks like a path, a
file name, an input id or an exception's own words (`looks_private`). A new table or column is refused until it is
declared here, and a new string column of a public table cannot be declared without its form: the attacker's reading
of the tables is checked at every write, not by a test that knows today's columns.

Private tables (under `private/`) are declared too, with their private columns tagged: the private writer refuses a
table written outside `private/` or one that is not declared. The evaluation library keeps the distances and summary
schemas (`evaluation.tables`, which must not import `pipeline`); they are tagged here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa

from evaluation.tables import DISTANCES_SCHEMA, SUMMARY_SCHEMA
from pipeline.tables.public_surface import (
    ANON_ID,
    CLASS_NAME,
    LABEL,
    LEVEL_DIR,
    REASON,
    RECOGNIZER,
    RELEASE_NAME,
    SHA256,
    PublicSurfaceError,
    Rule,
    is_string,
    one_of,
)


@dataclass(frozen=True)
class Table:
    """One table of a run folder: `where` relative to the folder (a `.parquet` folder of part files when
    `parts`), its schema, the columns tagged private (every other one is public) and the forms of its public
    string columns."""

    name: str
    where: str
    schema: pa.Schema
    parts: bool = False
    private_columns: frozenset[str] = frozenset()
    rules: Mapping[str, Rule] = field(default_factory=dict)

    @property
    def private(self) -> bool:
        return self.where.startswith("private/")

    @property
    def folder(self) -> str:
        return self.where.rpartition("/")[0]

    @property
    def file(self) -> str:
        return self.where.rpartition("/")[2]

    @property
    def public_columns(self) -> frozenset[str]:
        return frozenset(self.schema.names) - self.private_columns


def _table(name, where, schema, *, parts=False, private=(), rules=None) -> Table:
    table = Table(name, where, schema, parts, frozenset(private), {k: _rule(v) for k, v in (rules or {}).items()})
    unknown = (table.private_columns | set(table.rules)) - set(schema.names)
    if unknown:
        raise AssertionError(f"table {name}: tags name no column of its schema: {sorted(unknown)}")
    if not table.private:
        if table.private_columns:
            raise AssertionError(f"table {name} is public: a private column belongs in a private/ table")
        bare = [f.name for f in schema if is_string(f.type) and f.name not in table.rules]
        if bare:
            raise AssertionError(f"public table {name}: string columns need a declared form: {bare}")
    return table


def _rule(value: str | Rule) -> Rule:
    return value if isinstance(value, Rule) else Rule(value)


# --- the manifest (public): one row per (image, level); `error` is a reason code and a fixed text.
MANIFEST_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("level", pa.float64()),
        ("sample", pa.int32()),  # the local sample's index (--samples K: 0..K-1)
        ("t_boom", pa.int32()),
        ("n_steps", pa.int32()),
        ("status", pa.string()),  # "ok" | "error" | "no_face_detected" (face-region mode, no output)
        ("error", pa.string()),
        ("error_kind", pa.string()),  # "input" | "transient" | null
        ("faces", pa.int32()),  # face-region mode: faces resampled (0: whole image, --no-face image); else null
        # The output image, relative to the run folder; null where the run holds no copy (another tool's
        # output under `boomerang evaluate`: its path is the other tool's, private/outputs.parquet keeps it).
        ("output_path", pa.string()),
        ("sha256_output", pa.string()),
        ("seconds", pa.float64()),
    ]
)

# Face-region mode: one detected face of an output, where it was resampled, and its generator's seed.
FACE_BOX = pa.struct(
    [
        ("face", pa.int32()),
        ("x", pa.int32()),
        ("y", pa.int32()),
        ("w", pa.int32()),
        ("h", pa.int32()),
        ("confidence", pa.float64()),
        ("left", pa.int32()),
        ("top", pa.int32()),
        ("side", pa.int32()),
        ("seed", pa.int64()),
    ]
)

# private/: per (image, level) what must never be shared.
OUTPUTS_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("level", pa.float64()),
        ("seed", pa.int64()),  # whole-image outputs; in face-region mode each face's is in face_boxes
        # Face-region mode: the detected faces (boxes in the original's pixels: they locate people in the
        # photo, so they stay private), null in whole-image mode. `pipeline.tables.read.read_faces` flattens them.
        ("face_boxes", pa.list_(FACE_BOX)),
        ("source_sha256", pa.string()),
        ("source_size", pa.int64()),
        ("source_mtime", pa.float64()),
        ("error_detail", pa.string()),
        # `boomerang evaluate`: where the other tool's output was read (its path names the person, as LFW's do).
        ("output_source", pa.string()),
    ]
)

# private/: per (image, level, recognizer) of an "ok" distance row, the two face embeddings it compared.
EMBEDDINGS_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("level", pa.float64()),
        ("face", pa.int32()),  # face-region mode: the face's index; null for a whole-image row
        ("recognizer", pa.string()),
        ("original", pa.list_(pa.float32())),
        ("anonymized", pa.list_(pa.float32())),
    ]
)

IDENTITY_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("image_id", pa.string()),
        ("source", pa.string()),
        ("identity", pa.string()),  # who is in the image (--identity-from / --identity-column), else null
        ("sample", pa.int32()),  # which local sample of the image this anon_id names (--samples K)
    ]
)

# private/inputs/: the running job's discovered inputs, one file per shard in input order
# (pipeline.tables.input_lists): item key, image id, source, who (--identity-*), the input's row.
INPUT_LIST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # the item's key: its image id, or secret.output_key(id, sample) with --samples
        ("image_id", pa.string()),
        ("sample", pa.int32()),
        ("anon_id", pa.string()),
        ("source", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.float64()),
        ("problem", pa.string()),
        ("identity", pa.string()),
        ("position", pa.int64()),  # the row of a Parquet input; 0 for a folder's files (in path order)
    ]
)

# private/.work/: a pass's work rows, a scratch file per shard (pipeline.tables.work_spool); seeds from the secret.
WORK_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("image_id", pa.string()),
        ("sample", pa.int64()),
        ("anon_id", pa.string()),
        ("source", pa.string()),
        ("source_size", pa.int64()),
        ("source_mtime", pa.float64()),
        ("problem", pa.string()),
        ("levels", pa.list_(pa.float64())),
        ("seeds", pa.list_(pa.int64())),
        ("subkeys", pa.list_(pa.string())),
    ]
)

# private/: one row per attacked (output, recognizer, attack). Per row it says how findable that output is
# and, for re-identification, how many photos its person has (chance_1, a null rank for a one-photo
# person): private. The summary carries the aggregates per (level, recognizer).
ATTACKS_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("level", pa.float64()),
        ("face", pa.int32()),  # face-region mode: the face attacked (each face is a query); else null
        ("recognizer", pa.string()),
        ("attack", pa.string()),
        ("rank", pa.int64()),
        ("gallery_size", pa.int64()),
        ("hit_1", pa.bool_()),
        ("hit_5", pa.bool_()),
        ("chance_1", pa.float64()),  # hit@1 of an attacker who guesses
        # reid: people in the gallery with two photos or more (attackable) and with one (not)
        ("people_attackable", pa.int64()),
        ("people_single", pa.int64()),
    ]
)

# release/manifest.parquet: exactly the released images.
RELEASE_SCHEMA = pa.schema(
    [
        ("release_id", pa.string()),
        ("level", pa.float64()),
        ("t_boom", pa.int32()),
        ("n_steps", pa.int32()),
        ("sha256_output", pa.string()),
        ("output_path", pa.string()),
    ]
)

# private/released.parquet: which internal output each release name is (where release names differ from
# anon_ids).
RELEASED_SCHEMA = pa.schema([("anon_id", pa.string()), ("release_id", pa.string()), ("level", pa.float64())])

# private/withheld.parquet: what the gate kept back, and why, with the input it came from.
WITHHELD_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("last_level", pa.float64()),
        ("reason", pa.string()),
        ("image_id", pa.string()),
        ("source", pa.string()),
    ]
)

# train/labels.parquet (`boomerang augment`): one row per output laid out for a data loader.
LABELS_SCHEMA = pa.schema(
    [("path", pa.string()), ("label", pa.string()), ("level", pa.float64()), ("sample", pa.int32())]
)

# `boomerang augment`, private: each class's pseudonym in train/ and its name (pipeline.augment).
CLASSES_SCHEMA = pa.schema([("class", pa.string()), ("label", pa.string())])

# `boomerang enhance`: per image and method, and per (method, level).
QUALITY_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("level", pa.float64()),  # null for the plain upsampling baselines
        ("method", pa.string()),  # "boomerang" | "lanczos" | "bicubic"
        ("psnr", pa.float64()),  # dB; inf where identical
        ("ssim", pa.float64()),
    ]
)

QUALITY_SUMMARY_SCHEMA = pa.schema(
    [
        ("method", pa.string()),
        ("level", pa.float64()),
        ("n_images", pa.int64()),
        ("psnr_mean", pa.float64()),
        ("n_identical", pa.int64()),
        ("ssim_mean", pa.float64()),
    ]
)

_METHODS = one_of("boomerang", "lanczos", "bicubic")

_METRICS = one_of("cosine", "euclidean", "euclidean_l2")

TABLES: tuple[Table, ...] = (
    _table(
        "manifest",
        "manifest.parquet",
        MANIFEST_SCHEMA,
        parts=True,
        rules={
            "anon_id": ANON_ID,
            "status": one_of("ok", "error", "no_face_detected"),
            "error": REASON,
            "error_kind": one_of("input", "transient"),
            "output_path": Rule(rf"images/{LEVEL_DIR}/{ANON_ID}\.png", names_files=True),
            "sha256_output": SHA256,
        },
    ),
    _table(
        "distances",
        "evaluation/distances.parquet",
        DISTANCES_SCHEMA,
        parts=True,
        rules={
            "anon_id": ANON_ID,
            "recognizer": RECOGNIZER,
            "metric": _METRICS,
            "compared_at": one_of("detected", "original_box", "whole_image"),
            "status": one_of("ok", "error", "no_face_original", "missing_output", "no_face_detected"),
            "error": REASON,
        },
    ),
    _table(
        "summary",
        "evaluation/summary.parquet",
        SUMMARY_SCHEMA,
        rules={"recognizer": RECOGNIZER, "metric": _METRICS, "label": LABEL},
    ),
    _table("quality", "evaluation/quality.parquet", QUALITY_SCHEMA, rules={"anon_id": ANON_ID, "method": _METHODS}),
    _table("quality_summary", "evaluation/quality_summary.parquet", QUALITY_SUMMARY_SCHEMA, rules={"method": _METHODS}),
    _table(
        "release_manifest",
        "release/manifest.parquet",
        RELEASE_SCHEMA,
        rules={
            "release_id": RELEASE_NAME,
            "sha256_output": SHA256,
            "output_path": Rule(rf"images/{RELEASE_NAME}\.png", names_files=True),
        },
    ),
    # A class is shown by its keyed pseudonym only (pipeline.outputs.training_set); its name is in
    # private/classes.parquet.
    _table(
        "augment_labels",
        "train/labels.parquet",
        LABELS_SCHEMA,
        rules={
            "path": Rule(rf"(?:{LEVEL_DIR}/)?{CLASS_NAME}/{ANON_ID}\.png", names_files=True),
            "label": CLASS_NAME,
        },
    ),
    _table("classes", "private/classes.parquet", CLASSES_SCHEMA, private=("class", "label")),
    _table(
        "outputs",
        "private/outputs.parquet",
        OUTPUTS_SCHEMA,
        parts=True,
        private=("seed", "face_boxes", "source_sha256", "source_size", "source_mtime", "error_detail", "output_source"),
    ),
    _table(
        "embeddings", "private/embeddings.parquet", EMBEDDINGS_SCHEMA, parts=True, private=("original", "anonymized")
    ),
    _table("identities", "private/identities.parquet", IDENTITY_SCHEMA, private=("image_id", "source", "identity")),
    _table(
        "input_lists",
        "private/inputs",
        INPUT_LIST_SCHEMA,
        parts=True,
        private=("key", "image_id", "source", "size", "mtime", "identity", "position"),
    ),
    _table("work_rows", "private/.work", WORK_SCHEMA, parts=True, private=tuple(WORK_SCHEMA.names)),
    _table(
        "attacks",
        "private/attacks.parquet",
        ATTACKS_SCHEMA,
        private=("rank", "hit_1", "hit_5", "chance_1", "people_attackable", "people_single"),
    ),
    _table("released", "private/released.parquet", RELEASED_SCHEMA, private=("anon_id",)),
    _table("withheld", "private/withheld.parquet", WITHHELD_SCHEMA, private=("image_id", "source")),
)

BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}

# Every column a table outside private/ may hold (what the scanner checks a finished folder against).
PUBLIC_COLUMNS: frozenset[str] = frozenset().union(*(t.public_columns for t in TABLES if not t.private))

STAGING = ".staging-"

_PART = re.compile(r"part-\d{5,}(?:-[0-9a-f]{32})?\.parquet")


def table_at(path, name: str | None = None) -> Table:
    """The declared table a file at `path` belongs to (a part file of a table folder, or the table's file).

    `name` picks the table outright (a table written under a staging name, e.g. a release built elsewhere and
    swapped in); its file name must still be the table's. PublicSurfaceError when none is declared there.
    """
    parts = bool(_PART.fullmatch(path.name))
    folder, file = (path.parent.parent.name, path.parent.name) if parts else (path.parent.name, path.name)
    if name is not None:
        table = BY_NAME.get(name)
        if table is None or table.file != file or table.parts != parts:
            raise PublicSurfaceError(f"{file}: not where table {name!r} is declared (pipeline.tables.schemas)")
        return table
    # A folder staged to be swapped in whole (`release.staging-<hex>`) holds its final folder's tables.
    folder = folder.split(STAGING, 1)[0]
    found = [t for t in TABLES if t.parts == parts and t.file == file and t.folder in ("", folder)]
    # A run folder may itself be named like a table's folder: the exact folder wins over the top level.
    found.sort(key=lambda t: t.folder != folder)
    if not found:
        raise PublicSurfaceError(f"{folder}/{file}: no table is declared there (pipeline.tables.schemas)")
    return found[0]
