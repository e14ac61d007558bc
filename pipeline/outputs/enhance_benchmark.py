"""`boomerang enhance`: the paper's perceptual resolution enhancement, and its benchmark.

The job is an ordinary pass in which the anonymize stage upsamples each image by `--scale` (a named filter,
Lanczos by default) and Boomerangs it at a small level in tiles of the model's size (pipeline.execution.anonymize_stage,
anonymize.tiling). With `--benchmark` each input is first cut to a multiple of the scale and downscaled by it
(bicubic), and afterwards every output is compared with that reference, as the super-resolution literature
does without labels: PSNR and SSIM (evaluation.quality, scikit-image), side by side with plain Lanczos and
bicubic upsampling of the same low-resolution image. Per image in evaluation/quality.parquet, per level and
method in evaluation/quality_summary.parquet and in the report.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa

from anonymize import ImageError, decode_image, degrade, upsample
from evaluation.quality import quality_row
from evaluation.report_blocks import Section, Text, rows_table, section
from pipeline.execution.inputs import read_bytes
from pipeline.tables.read import read_manifest
from pipeline.tables.schemas import QUALITY_SCHEMA
from pipeline.tables.write import write_public_table

BASELINES = ("lanczos", "bicubic")


def measure_quality(job) -> tuple[pd.DataFrame, int]:
    """PSNR and SSIM of every ok output, and of the plain upsampling baselines, against the reference; and how
    many images were left out because their original is no longer in the input or cannot be read (a rerun
    after the file went or changed: the benchmark measures what it can, and says so)."""
    layout, scale = job.layout, job.settings.enhance.scale
    manifest = read_manifest(layout, columns=["anon_id", "level", "status", "output_path"])
    ok = manifest[manifest["status"] == "ok"].sort_values(["anon_id", "level"])
    sources = {job.anon_ids[item.image_id]: item.source for item in job.inputs.items}
    rows, unreadable = [], 0
    for anon_id, outputs in ok.groupby("anon_id", sort=True):
        try:
            original = decode_image(read_bytes(sources[anon_id]), max_pixels=job.settings.max_pixels)
        except (KeyError, OSError, ImageError):
            unreadable += 1
            continue
        reference, low = degrade(original, scale)
        truth = np.asarray(reference)
        for name in BASELINES:
            rows.append(
                {"anon_id": anon_id, "level": None, "method": name}
                | quality_row(truth, np.asarray(upsample(low, scale, name)))
            )
        for row in outputs.itertuples():
            output = np.asarray(decode_image((layout.root / row.output_path).read_bytes()))
            rows.append(
                {"anon_id": anon_id, "level": float(row.level), "method": "boomerang"} | quality_row(truth, output)
            )
    table = pa.Table.from_pylist(rows, schema=QUALITY_SCHEMA)
    write_public_table(table, layout.evaluation / "quality.parquet")
    summary = quality_summary(table.to_pandas())
    write_public_table(
        pa.Table.from_pandas(summary, preserve_index=False), layout.evaluation / "quality_summary.parquet"
    )
    return summary, unreadable


def quality_summary(quality: pd.DataFrame) -> pd.DataFrame:
    """Per (method, level): images, mean PSNR (finite values; identical images count apart) and mean SSIM."""
    found = []
    for (method, level), rows in quality.groupby(["method", quality["level"].fillna(-1.0)], sort=False):
        finite = rows["psnr"][np.isfinite(rows["psnr"])]
        found.append(
            {
                "method": method,
                "level": math.nan if level == -1.0 else float(level),
                "n_images": len(rows),
                "psnr_mean": float(finite.mean()) if len(finite) else math.nan,
                "n_identical": int((~np.isfinite(rows["psnr"])).sum()),
                "ssim_mean": float(rows["ssim"].mean()),
            }
        )
    frame = pd.DataFrame(found, columns=["method", "level", "n_images", "psnr_mean", "n_identical", "ssim_mean"])
    order = {"boomerang": 0, "lanczos": 1, "bicubic": 2}
    return frame.sort_values(
        ["level", "method"], key=lambda c: c.map(order) if c.name == "method" else c, ignore_index=True
    )


def quality_section(summary: pd.DataFrame, scale: int, meaningful: bool, unreadable: int = 0) -> Section:
    """The report's section: the benchmark's table, with what it can and cannot say."""
    warning = (
        None
        if meaningful
        else Text(
            "These outputs come from a random-weight model that boomerang generated: the numbers test the "
            "plumbing, not the quality of enhancement.",
            "notice",
        )
    )
    return section(
        "Enhancement benchmark: PSNR and SSIM",
        warning,
        Text(
            f"Each original was cut to a multiple of {scale}, downscaled {scale}x (bicubic), and brought back "
            f"{scale}x: by Boomerang enhancement at each level, and by plain Lanczos and bicubic upsampling. PSNR "
            "(dB, higher is closer) and SSIM (1 is identical) against the original, with scikit-image. The "
            "paper's point is perceptual: Boomerang adds plausible detail, which can lower PSNR while looking "
            "sharper; levels of 0.1-0.3 keep the content, higher ones change it."
        ),
        rows_table(
            ["method", "level", "images", "PSNR mean", "SSIM mean"],
            [
                (r.method, "–" if math.isnan(r.level) else f"{r.level:g}", r.n_images, f"{r.psnr_mean:.2f}")
                + (f"{r.ssim_mean:.4f}",)
                for r in summary.itertuples()
            ],
            text_columns=1,
        ),
        Text(
            f"{unreadable} images are not measured: their original is no longer in the input or cannot be read.",
            "notice",
        )
        if unreadable
        else None,
    )
