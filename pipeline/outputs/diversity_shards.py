"""The sample-diversity summary (pipeline.outputs.diversity) with bounded memory: shard by shard, then bucket by bucket.

An image's samples have their own keyed names, so they lie in different shards of private/embeddings. The
rows are regrouped on disk by image: pass 1 reads one shard at a time, attaches each row's image id (a range
read of private/identities.parquet, sorted by anon_id) and writes the shard's rows split into buckets by a
hash of the image id (files in a temporary folder of private/, removed at the end); pass 2 reads one bucket
at a time (every sample of an image is in its bucket) and adds its images' mean pairwise distances to the
running sums per (level, recognizer). The driver holds one shard or one bucket of embeddings, about
BUCKET_ROWS rows; with fewer rows than that there is one bucket and nothing is written.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.outputs.attack_tasks import source_groups
from pipeline.tables.write import write_scratch_table

# Embedding rows per bucket: 2**14 VGG-Face rows (4096 float32) are 256 MiB.
DIVERSITY_COLUMNS = ("diversity_images", "diversity_mean")  # the summary's columns (pipeline.outputs.diversity)
BUCKET_ROWS = 2**14
WANTED = ["anon_id", "level", "face", "recognizer", "anonymized"]


def sample_diversity(layout: RunLayout, bucket_rows: int = BUCKET_ROWS) -> pd.DataFrame:
    """Per (level, recognizer): images (faces) with 2+ samples and the mean pairwise distance between them."""
    columns = ["level", "recognizer", *DIVERSITY_COLUMNS]
    if not layout.identities.is_file() or not _has_samples(layout.identities):
        return pd.DataFrame(columns=columns)
    groups = source_groups(layout.embeddings)
    rows = sum(storage.parquet_file(p).metadata.num_rows for group in groups for p in group)
    buckets = max(1, math.ceil(rows / bucket_rows))
    sums: dict[tuple, list] = {}
    if buckets == 1:
        frames = [_with_images(layout, group) for group in groups]
        _add(sums, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
    else:
        folder = layout.private / ".diversity-buckets"
        storage.remove_tree(folder)
        storage.make_dirs(folder, private=True)
        try:
            written: dict[int, list] = {}
            for i, group in enumerate(groups):  # pass 1: one shard at a time, split by image
                frame = _with_images(layout, group)
                if frame.empty:
                    continue
                bucket = np.array([_bucket(image, buckets) for image in frame["image"].tolist()])
                for b in np.unique(bucket).tolist():
                    path = folder / f"part-{i:05d}-{b:05d}.parquet"
                    mine = frame[bucket == b]
                    write_scratch_table(pa.Table.from_pandas(mine, preserve_index=False), path)
                    written.setdefault(b, []).append(path)
            for paths in written.values():  # pass 2: one bucket at a time
                _add(sums, pd.concat([storage.read_table(p).to_pandas() for p in paths], ignore_index=True))
        finally:
            storage.remove_tree(folder)
    found = [
        {"level": level, "recognizer": recognizer, "diversity_images": n, "diversity_mean": total / n}
        for (level, recognizer), (n, total) in sorted(sums.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))
    ]
    return pd.DataFrame(found, columns=columns)


def _has_samples(identities) -> bool:
    """Whether some output is a sample other than the first (read a batch at a time)."""
    if "sample" not in storage.read_schema(identities).names:
        return False
    for batch in storage.parquet_file(identities).iter_batches(columns=["sample"], batch_size=2**16):
        top = pc.max(batch.column(0)).as_py()
        if top is not None and top >= 1:
            return True
    return False


def _with_images(layout: RunLayout, paths) -> pd.DataFrame:
    """One shard's embedding rows with each row's image id (a range read of identities.parquet)."""
    tables = [storage.parquet_file(p).read(columns=WANTED) for p in paths]
    table = pa.concat_tables(tables, promote_options="default") if tables else None
    if table is None or not len(table):
        return pd.DataFrame()
    ids = table["anon_id"]
    low, high = pc.min(ids).as_py(), pc.max(ids).as_py()
    found = storage.read_table(
        layout.identities, columns=["anon_id", "image_id"], filters=[("anon_id", ">=", low), ("anon_id", "<=", high)]
    )
    image_of = dict(zip(found["anon_id"].to_pylist(), found["image_id"].to_pylist(), strict=True))
    frame = table.to_pandas()
    frame["image"] = frame["anon_id"].map(image_of)
    return frame[["level", "recognizer", "image", "face", "anonymized"]]


def _bucket(image, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(str(image).encode(), digest_size=8).digest(), "big") % buckets


def _add(sums: dict, embeddings: pd.DataFrame) -> None:
    """Add the images (faces) of these rows, every sample of each among them, to the per-(level, recognizer)
    count and sum of mean pairwise distances.

    The mean cosine distance over all pairs of K unit vectors u_i is 1 - (|sum u_i|^2 - K) / (K (K - 1)): one
    vector sum per image instead of K^2 / 2 products (pipeline.outputs.diversity.mean_pairwise_distance's value)."""
    if not embeddings.empty:
        embeddings = embeddings[embeddings["image"].notna()]  # an output whose image is not known: no samples
    if embeddings.empty:
        return
    keys = ["level", "recognizer", "image"]
    frame = embeddings.assign(face=embeddings["face"].fillna(-1))
    group, _ = pd.MultiIndex.from_frame(frame[[*keys, "face"]].astype({"level": str})).factorize()
    vectors = np.stack(frame["anonymized"].to_numpy()).astype(np.float64)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0])
    total = np.add.reduceat(unit[order], starts, axis=0)
    k = np.diff(np.r_[starts, len(order)]).astype(np.float64)
    several = k >= 2
    mean = 1.0 - ((total**2).sum(axis=1) - k)[several] / (k * (k - 1))[several]
    first = order[starts[several]]
    per = pd.DataFrame({"level": frame["level"].to_numpy()[first], "recognizer": frame["recognizer"].to_numpy()[first],
                        "mean": mean})  # fmt: skip
    for (level, recognizer), rows in per.groupby(["level", "recognizer"], dropna=False):
        entry = sums.setdefault((level, recognizer), [0, 0.0])
        entry[0] += len(rows)
        entry[1] += float(rows["mean"].sum())
