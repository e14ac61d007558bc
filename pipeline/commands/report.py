"""`boomerang report DIR`: the summary, report and run.json of an existing run folder rebuilt (no pass)."""

from __future__ import annotations

import argparse

from pipeline.execution.job import Job
from pipeline.folder.layout import OutputError, RunLayout
from pipeline.folder.lock import run_lock
from pipeline.folder.provenance import read_json
from pipeline.outputs.finalize import finalize
from pipeline.settings.config import build_settings, flatten


def cmd_report(args: argparse.Namespace) -> int:
    layout = RunLayout.at(args.dir)
    layout.check_store()
    record = read_json(layout.run_json)
    if not record.get("settings"):
        raise OutputError(f"{layout.root} holds no run.json from a boomerang run; pass the run's --out folder")
    values = flatten(record["settings"])
    values["out"] = str(layout.root)
    settings = build_settings(values)
    with run_lock(layout.lock_file, shared_filesystem=settings.shared_filesystem_lock) as lock:
        job = Job(
            settings, "run", layout, inputs=None, secret=b"", cluster=None, lock=lock, notice=record.get("notice")
        )
        if settings.gate:
            from pipeline.release.gate import finish_gate

            result = finish_gate(job)
        else:
            result = finalize(job)
    print(f"Report: {result.report}")
    return 0
