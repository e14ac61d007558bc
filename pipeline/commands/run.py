"""`boomerang run` and `boomerang anonymize`: one pass over --levels (or the gate's rounds with --gate)."""

from __future__ import annotations

import argparse

from pipeline.commands.common import run_job
from pipeline.execution.job import Job, run_pass
from pipeline.outputs.finalize import JobResult, finalize
from pipeline.settings.config import SettingsError, settings_from_flags


def cmd_run(args: argparse.Namespace) -> int:
    return run_job(settings_from_flags(vars(args)), "run", default_work)


def cmd_anonymize(args: argparse.Namespace) -> int:
    settings = settings_from_flags(vars(args))
    if settings.gate:
        raise SettingsError("--gate needs evaluation: use `boomerang run --gate`")
    return run_job(settings, "anonymize", default_work)


def default_work(job: Job) -> JobResult:
    """The gate's rounds with --gate, else one pass over --levels; then finalize."""
    if job.settings.gate:
        from pipeline.release.gate import run_gate

        return run_gate(job)
    run_pass(job, job.settings.levels)
    return finalize(job)
