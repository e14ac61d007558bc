"""How different the local samples of one image are (`--samples K`, the paper's data augmentation).

For each (level, recognizer), every image with two samples or more (in face-region mode: every face) gets the
mean cosine distance between its samples' embeddings, all pairs, taken from the embeddings the evaluation kept
(private/embeddings.parquet: the face each distance was measured at). The summary reports their mean next to
the samples' mean distance from the original (`distance_mean`): samples as far from each other as from their
original are as diverse as the level allows; samples close to each other are near copies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evaluation.report_blocks import Section, Text, rows_table, section
from pipeline.folder.layout import RunLayout
from pipeline.outputs.diversity_shards import DIVERSITY_COLUMNS


def sample_diversity(layout: RunLayout) -> pd.DataFrame:
    """Per (level, recognizer): images (faces) with 2+ samples and the mean pairwise distance between them
    (read shard by shard, regrouped by image bucket by bucket: pipeline.outputs.diversity_shards)."""
    from pipeline.outputs.diversity_shards import sample_diversity as bounded

    return bounded(layout)


def mean_pairwise_distance(vectors: np.ndarray) -> float:
    """The mean cosine distance (1 - cosine similarity) over all pairs of rows of `vectors` (n >= 2)."""
    unit = vectors.astype(np.float64)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    similarity = unit @ unit.T
    n = len(unit)
    upper = similarity[np.triu_indices(n, k=1)]
    return float(np.mean(1.0 - upper))


def with_diversity(summary: pd.DataFrame, diversity: pd.DataFrame) -> pd.DataFrame:
    """The summary with its diversity columns filled per (level, recognizer) where there are samples."""
    if diversity.empty:
        return summary
    merged = summary.drop(columns=list(DIVERSITY_COLUMNS)).merge(diversity, on=["level", "recognizer"], how="left")
    merged["diversity_images"] = merged["diversity_images"].astype("Int64")
    return merged[list(summary.columns)]


def diversity_section(summary: pd.DataFrame) -> Section | None:
    """The report's section on local samples: how far the samples of one image are from each other."""
    rows = summary[summary["diversity_images"].notna()] if "diversity_images" in summary else summary.iloc[0:0]
    if rows.empty:
        return None
    return section(
        "Local samples: diversity",
        Text(
            "Each image was sampled several times (--samples), each sample with its own generator. Diversity is "
            "the mean cosine distance between the samples of one image (all pairs, by the same recognizer), next "
            "to their mean distance from the original: samples as far from each other as from their original are "
            "as varied as the level allows."
        ),
        rows_table(
            ["level", "recognizer", "images with 2+ samples", "mean distance between samples"]
            + ["mean distance from the original"],
            [
                (
                    str(r.label),
                    r.recognizer,
                    int(r.diversity_images),
                    f"{r.diversity_mean:.4f}",
                    f"{r.distance_mean:.4f}",
                )
                for r in rows.itertuples()
            ],
            text_columns=2,
        ),
    )
