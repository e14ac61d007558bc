"""The sample-diversity summary read shard by shard and regrouped by image in buckets
(pipeline.outputs.diversity_shards)."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from evaluation.distances import cosine_distance
from pipeline.folder.layout import RunLayout
from pipeline.outputs.diversity_shards import sample_diversity
from pipeline.tables.identities import write_identities
from pipeline.tables.schemas import EMBEDDINGS_SCHEMA
from pipeline.tables.shards import plan_shards, shard_name
from pipeline.tables.write import write_private_table

LEVELS = (0.4, 0.9)


def _folder(tmp_path):
    """9 images with 3 samples and one with a single sample, each sample its own anon_id, over 4 shards."""
    rng = np.random.default_rng(0)
    layout = RunLayout.at(str(tmp_path / "out"))
    layout.prepare(overwrite=False)
    samples = [(f"img{i}", s) for i in range(9) for s in range(3)] + [("alone", 0)]
    ids = [f"{v:016x}" for v in rng.integers(0, 2**62, len(samples))]
    shards = plan_shards(layout, ids, 8)
    vectors = {(a, lv): rng.normal(size=6).astype(np.float32) for a in ids for lv in LEVELS}
    rows = {}
    for a in ids:
        for lv in LEVELS:
            rows.setdefault(shards.of(a), []).append(
                {"anon_id": a, "level": lv, "face": None, "recognizer": "Facenet",
                 "original": [1.0] * 6, "anonymized": vectors[(a, lv)].tolist()}
            )  # fmt: skip
    for shard, found in rows.items():
        write_private_table(
            pa.Table.from_pylist(found, schema=EMBEDDINGS_SCHEMA), layout.embeddings / shard_name(shard)
        )
    write_identities(layout, [(a, img, f"/d/{img}", None, s) for a, (img, s) in zip(ids, samples, strict=True)])
    return layout, ids, samples, vectors


@pytest.mark.parametrize("bucket_rows", [10**6, 7])
def test_diversity_in_buckets_equals_the_pairwise_mean_over_each_images_samples(tmp_path, bucket_rows):
    layout, ids, samples, vectors = _folder(tmp_path)

    found = sample_diversity(layout, bucket_rows=bucket_rows).set_index("level")

    assert set(found.index) == set(LEVELS) and (found["recognizer"] == "Facenet").all()
    for lv in LEVELS:
        means = []
        for image in sorted({img for img, _ in samples if img != "alone"}):
            mine = [vectors[(a, lv)] for a, (img, _) in zip(ids, samples, strict=True) if img == image]
            means.append(np.mean([cosine_distance(x, y) for x, y in itertools.combinations(mine, 2)]))
        assert found.loc[lv, "diversity_images"] == 9  # "alone" has one sample
        assert found.loc[lv, "diversity_mean"] == pytest.approx(np.mean(means), rel=1e-9)
    assert not (layout.private / ".diversity-buckets").exists()  # the regrouped rows are removed
