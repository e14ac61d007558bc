"""`boomerang report DIR`: the summary, report and run.json of an existing run folder rebuilt (no pass)."""

from __future__ import annotations

import argparse

from pipeline.execution.job import finished_job, recorded_settings
from pipeline.folder.layout import OutputError, RunLayout
from pipeline.folder.lock import run_lock
from pipeline.folder.provenance import read_json
from pipeline.release.gate import finish


def cmd_report(args: argparse.Namespace) -> int:
    layout = RunLayout.at(args.dir)
    layout.check_store()
    record = read_json(layout.run_json)
    if not record.get("settings"):
        raise OutputError(f"{layout.root} holds no run.json from a boomerang run; pass the run's --out folder")
    settings = recorded_settings(layout, record)
    with run_lock(layout.lock_file, shared_filesystem=settings.shared_filesystem_lock) as lock:
        result = finish(finished_job(settings, layout, record, lock))
    print(f"Report: {result.report}")
    return 0
