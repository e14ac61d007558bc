"""`boomerang augment`: K local samples per image (evaluation off unless --evaluate), then train/ in class
folders."""

from __future__ import annotations

import argparse

from pipeline.commands.common import run_job
from pipeline.commands.flags import ATTACKS, EVALUATION, part_settings
from pipeline.execution.anonymize_pass import run_pass
from pipeline.execution.job import Job
from pipeline.outputs.finalize import JobResult, finalize
from pipeline.settings.config import SettingsError, settings_from_flags
from pipeline.settings.fingerprint import ANONYMIZE_AND_EVALUATE, ANONYMIZE_ONLY


def cmd_augment(args: argparse.Namespace) -> int:
    flags = vars(args).copy()
    evaluate, label_column = flags.pop("evaluate"), flags.pop("label_column")
    measuring = sorted(key for key in part_settings(EVALUATION) | part_settings(ATTACKS) if flags.get(key) is not None)
    if measuring and not evaluate:
        named = ", ".join("--" + key.replace("_", "-") for key in measuring)
        them = "it" if len(measuring) == 1 else "them"
        raise SettingsError(
            f"{named}: augment measures its samples only with --evaluate; add --evaluate or drop {them}"
        )
    settings = settings_from_flags(flags)
    if settings.gate:
        raise SettingsError("augment makes training data, not a release: drop --gate")

    def work(job: Job) -> JobResult:
        from pipeline.execution.inputs import identity_labels
        from pipeline.outputs.training_set import build_training_set

        run_pass(job, job.settings.levels)
        labels = identity_labels(job.inputs, None, label_column) if label_column else None
        layout = job.layout
        return finalize(job, extra={"train": build_training_set(layout, job.secret, labels) | {"folder": "train"}})

    return run_job(settings, ANONYMIZE_AND_EVALUATE if evaluate else ANONYMIZE_ONLY, work)
