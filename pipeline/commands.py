"""What each subcommand does, once its flags are parsed."""

from __future__ import annotations

import argparse

from anonymize import WeightsNotFound
from evaluation import MissingWeights

from .cluster import disconnect
from .config import SettingsError, build_settings, flatten
from .finalize import closing_paragraph, finalize
from .inputs import InputError
from .job import Job, JobError, JobFailed, prepare, record_failure, run_pass
from .layout import OutputError, RunLayout
from .provenance import read_json

# Errors that mean "this job cannot run": one line on stderr and exit status 2, never a trace.
CANNOT_RUN = (SettingsError, InputError, OutputError, JobError, WeightsNotFound, MissingWeights)


def dispatch(args: argparse.Namespace) -> int:
    return {
        "run": cmd_run,
        "anonymize": cmd_anonymize,
        "evaluate": cmd_evaluate,
        "report": cmd_report,
        "demo": cmd_demo,
        "doctor": cmd_doctor,
    }[args.command](args)


def cmd_run(args: argparse.Namespace) -> int:
    from .cli import settings_from_args

    return run_job(settings_from_args(args), "run")


def cmd_anonymize(args: argparse.Namespace) -> int:
    from .cli import settings_from_args

    settings = settings_from_args(args)
    if settings.gate:
        raise SettingsError("--gate needs evaluation: use `boomerang run --gate`")
    return run_job(settings, "anonymize")


def run_job(settings, mode: str) -> int:
    job = prepare(settings, mode)
    try:
        if settings.gate:
            from .gate import run_gate

            result = run_gate(job)
        else:
            run_pass(job, settings.levels)
            result = finalize(job)
    except CANNOT_RUN:
        raise
    except Exception as err:  # a failure mid-job (disk full, a cluster gone): one line, resumable
        raise JobFailed(record_failure(job, err)) from err
    finally:
        disconnect(job.cluster)
    print(closing_paragraph(result))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .cli import settings_from_args
    from .foreign import evaluate_folder

    settings = settings_from_args(args)
    result = evaluate_folder(settings, originals=args.originals, anonymized=args.anonymized)
    print(closing_paragraph(result))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    layout = RunLayout.at(args.dir)
    record = read_json(layout.run_json)
    if not record.get("settings"):
        raise OutputError(f"{layout.root} holds no run.json from a boomerang run; pass the run's --out folder")
    values = flatten(record["settings"])
    values["out"] = str(layout.root)
    settings = build_settings(values)
    job = Job(settings, "run", layout, inputs=None, salt=b"", cluster=None)
    sections = []
    if settings.gate:
        from .gate import gate_section

        sections.append(gate_section(job))
    result = finalize(job, sections=sections)
    print(f"Report: {result.report}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_settings

    return run_job(demo_settings(args.out, address=args.address, overwrite=args.overwrite), "run")


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import report

    print(report(model=args.model, recognizers=args.recognizers, engine=args.engine, address=args.address))
    return 0
