"""`boomerang evaluate`: any anonymizer's outputs against their originals (no anonymization)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from pipeline.commands.common import run_job
from pipeline.execution.job import Job
from pipeline.outputs.finalize import JobResult, finalize
from pipeline.settings.config import settings_from_flags
from pipeline.settings.fingerprint import EVALUATE_ONLY


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.execution.evaluate_pairs import evaluate_pass

    settings = replace(settings_from_flags(vars(args)), input=args.originals)

    def work(job: Job) -> JobResult:
        evaluate_pass(job, args.anonymized)
        return finalize(job)

    return run_job(settings, EVALUATE_ONLY, work)
