"""`boomerang augment`: K local samples per training image, laid out for a data loader (the paper's data
augmentation).

The job is an ordinary pass with `--samples K` (evaluation off unless `--evaluate`); afterwards `train/`
holds every ok output once more, as a hard link (a copy where links are not possible), in its input's class
folder, `train/<class>/<anon_id>.png` (with several levels `train/level=L/<class>/...`), and
`train/labels.parquet` lists (path, label, level, sample). The class is the input's parent folder
(`cats/tabby.jpg` -> `cats`) or, for a Parquet input, `--label-column`; in a face dataset that folder is the
person's name. So `train/` never shows a class's name: each class is a keyed pseudonym, `class-<12 hex>`
(HMAC of the run's secret over the name, the same in every run of the folder), and
`private/classes.parquet` maps each pseudonym back to its name for the owner. File names are the keyed
anon_ids: nothing of the source file name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import PurePosixPath

import pandas as pd
import pyarrow as pa

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout, level_dirname
from pipeline.tables.read import read_manifest
from pipeline.tables.schemas import CLASSES_SCHEMA, LABELS_SCHEMA
from pipeline.tables.write import write_private_table, write_public_table

NO_CLASS = "_unlabelled"  # images at the top of the input folder


def class_labels(identities: pd.DataFrame, label_column: dict[str, str] | None = None) -> dict[str, str]:
    """anon_id -> class: the given labels by image id (a Parquet column), else the image's parent folder."""
    labels = {}
    for anon, image in zip(identities["anon_id"], identities["image_id"], strict=True):
        if label_column is not None:
            label = label_column.get(image)
        else:
            parent = PurePosixPath(image).parent.as_posix()
            label = None if parent == "." else parent
        labels[anon] = label or NO_CLASS
    return labels


def class_pseudonym(secret: bytes, label: str) -> str:
    """What `train/` calls a class: a keyed hash of its name (a person's name, in a face dataset)."""
    if label == NO_CLASS:
        return NO_CLASS
    return "class-" + hmac.new(secret, b"class\x00" + label.encode("utf-8"), hashlib.sha256).hexdigest()[:12]


def build_training_set(layout: RunLayout, secret: bytes, label_column: dict[str, str] | None = None) -> dict:
    """Rebuild `train/` from the manifest's ok rows, classes under keyed pseudonyms (their names in
    private/classes.parquet); returns counts for run.json."""
    manifest = read_manifest(layout, columns=["anon_id", "level", "sample", "status", "output_path"])
    ok = manifest[manifest["status"] == "ok"].sort_values(["level", "anon_id"])
    labels = class_labels(
        storage.read_table(layout.identities, columns=["anon_id", "image_id"]).to_pandas(), label_column
    )
    storage.remove_tree(layout.train)
    storage.make_dirs(layout.train)
    several = ok["level"].nunique() > 1
    rows, names = [], {}
    for row in ok.itertuples():
        name = labels.get(row.anon_id, NO_CLASS)
        label = class_pseudonym(secret, name)
        names[label] = name
        relative = PurePosixPath(label) / f"{row.anon_id}.png"
        if several:
            relative = PurePosixPath(level_dirname(row.level)) / relative
        target = layout.train / relative
        storage.make_dirs(target.parent)
        link_or_copy(layout.root / row.output_path, target)
        sample = None if pd.isna(row.sample) else int(row.sample)
        rows.append({"path": relative.as_posix(), "label": label, "level": float(row.level), "sample": sample})
    write_public_table(pa.Table.from_pylist(rows, schema=LABELS_SCHEMA), layout.train / "labels.parquet")
    classes = [{"class": c, "label": n} for c, n in sorted(names.items())]
    write_private_table(pa.Table.from_pylist(classes, schema=CLASSES_SCHEMA), layout.classes)
    return {"images": len(rows), "classes": len({r["label"] for r in rows})}


def link_or_copy(source, target) -> None:
    if storage.is_local(source) and storage.is_local(target):
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or links not allowed
            pass
    storage.copy_file(source, target)
