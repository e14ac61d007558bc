"""`boomerang enhance`: upsample by --scale and Boomerang at a small level in tiles; with --benchmark,
PSNR/SSIM against the originals next to plain upsampling."""

from __future__ import annotations

import argparse
from dataclasses import replace

import pandas as pd

from pipeline.commands.common import run_job
from pipeline.execution.anonymize_pass import run_pass
from pipeline.execution.job import Job
from pipeline.outputs.finalize import JobResult, finalize
from pipeline.settings.config import SettingsError, settings_from_flags
from pipeline.settings.fingerprint import ANONYMIZE_ONLY


def cmd_enhance(args: argparse.Namespace) -> int:
    flags = vars(args).copy()
    flags["levels"] = flags.get("levels") or "0.2"
    settings = settings_from_flags(flags)
    if settings.region.faces:
        raise SettingsError("enhance works on whole images, in tiles: drop --region faces")
    if settings.enhance.degrade and settings.input and settings.input.endswith(".parquet"):
        raise SettingsError("--benchmark reads the originals from a folder of images: pass a folder as INPUT")
    return run_job(settings, ANONYMIZE_ONLY, _work)


def _work(job: Job) -> JobResult:
    from pipeline.outputs.enhanced_folder import build_enhanced

    run_pass(job, job.settings.levels)
    result = finalize(job, extra={"enhanced": build_enhanced(job.layout)})
    if not job.settings.enhance.degrade:
        return result
    from evaluation import DISTANCES_SCHEMA, SUMMARY_COLUMNS
    from pipeline.outputs.enhance_benchmark import measure_quality, quality_section
    from pipeline.outputs.internal_report import build_report, internal_samples

    summary, unreadable = measure_quality(job)
    section = quality_section(summary, job.settings.enhance.scale, meaningful=job.notice is None, unreadable=unreadable)
    report = build_report(
        job,
        result.overview.failures,
        pd.DataFrame(columns=list(SUMMARY_COLUMNS)),
        DISTANCES_SCHEMA.empty_table().to_pandas(),
        internal_samples(job, result.overview.samples),
        [section],
    )
    return replace(result, report=str(report))
