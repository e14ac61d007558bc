"""`boomerang run` and `boomerang anonymize`: one pass over --levels (or the gate's rounds with --gate)."""

from __future__ import annotations

import argparse

from pipeline.commands.common import run_job
from pipeline.execution.anonymize_pass import run_pass
from pipeline.execution.job import Job
from pipeline.outputs.finalize import JobResult, finalize
from pipeline.settings.config import SettingsError, settings_from_flags
from pipeline.settings.fingerprint import ANONYMIZE_AND_EVALUATE, ANONYMIZE_ONLY


def cmd_run(args: argparse.Namespace) -> int:
    return run_job(settings_from_flags(vars(args)), ANONYMIZE_AND_EVALUATE, default_work)


def cmd_anonymize(args: argparse.Namespace) -> int:
    settings = settings_from_flags(vars(args))
    if settings.gate:
        raise SettingsError("--gate needs evaluation: use `boomerang run --gate`")
    return run_job(settings, ANONYMIZE_ONLY, default_work)


def default_work(job: Job) -> JobResult:
    """The gate's rounds with --gate, else one pass over --levels; then finalize."""
    if job.settings.gate:
        from pipeline.release.gate import run_gate

        return run_gate(job)
    run_pass(job, job.settings.levels)
    return finalize(job)
