"""What each subcommand does, once its flags are parsed."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace

import pandas as pd

from anonymize import WeightsNotFound
from evaluation import MissingWeights

from .cluster import ClusterUnavailable
from .config import JobSettings, SettingsError, build_settings, flatten, settings_from_flags
from .finalize import JobResult, closing_lines, finalize
from .inputs import InputError
from .job import Job, JobError, JobFailed, prepare, record_failure, run_pass
from .layout import OutputError, RunLayout
from .lock import LockLost, run_lock
from .messages import kept_outputs
from .provenance import RefusedRerun, read_json

# Errors that mean "this job cannot run": one line on stderr and exit status 2, never a trace.
CANNOT_RUN = (SettingsError, InputError, OutputError, JobError, RefusedRerun, WeightsNotFound, MissingWeights)
EXIT_STRICT = 3

__all__ = ["CANNOT_RUN", "ClusterUnavailable", "JobFailed", "Terminated", "dispatch"]


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled like Ctrl-C (the run is recorded as interrupted and resumes when rerun)."""


def dispatch(args: argparse.Namespace) -> int:
    return {
        "run": cmd_run,
        "anonymize": cmd_anonymize,
        "augment": cmd_augment,
        "enhance": cmd_enhance,
        "evaluate": cmd_evaluate,
        "report": cmd_report,
        "demo": cmd_demo,
        "doctor": cmd_doctor,
        "weights": cmd_weights,
        "forget": cmd_forget,
    }[args.command](args)


def cmd_run(args: argparse.Namespace) -> int:
    return run_job(settings_from_flags(vars(args)), "run")


def cmd_anonymize(args: argparse.Namespace) -> int:
    settings = settings_from_flags(vars(args))
    if settings.gate:
        raise SettingsError("--gate needs evaluation: use `boomerang run --gate`")
    return run_job(settings, "anonymize")


def cmd_augment(args: argparse.Namespace) -> int:
    """K local samples per image (evaluation off unless --evaluate), then train/ in class folders."""
    flags = vars(args).copy()
    evaluate, label_column = flags.pop("evaluate"), flags.pop("label_column")
    settings = settings_from_flags(flags)
    if settings.gate:
        raise SettingsError("augment makes training data, not a release: drop --gate")

    def work(job: Job) -> JobResult:
        from .augment import build_training_set
        from .inputs import identity_labels

        run_pass(job, job.settings.levels)
        labels = identity_labels(job.inputs, None, label_column) if label_column else None
        layout = job.layout
        return finalize(job, extra={"train": build_training_set(layout, job.secret, labels) | {"folder": "train"}})

    return run_job(settings, "run" if evaluate else "anonymize", work)


def cmd_enhance(args: argparse.Namespace) -> int:
    """Upsample by --scale and Boomerang at a small level in tiles; with --benchmark, PSNR/SSIM against the
    originals next to plain upsampling."""
    flags = vars(args).copy()
    flags["levels"] = flags.get("levels") or "0.2"
    settings = settings_from_flags(flags)
    if settings.region.faces:
        raise SettingsError("enhance works on whole images, in tiles: drop --region faces")
    if settings.enhance.degrade and settings.input and settings.input.endswith(".parquet"):
        raise SettingsError("--benchmark reads the originals from a folder of images: pass a folder as INPUT")

    def work(job: Job) -> JobResult:
        run_pass(job, job.settings.levels)
        result = finalize(job)
        if not job.settings.enhance.degrade:
            return result
        from evaluation import DISTANCES_SCHEMA, SUMMARY_COLUMNS

        from .enhance import measure_quality, quality_section
        from .finalize import build_report, internal_samples

        summary = measure_quality(job)
        section = quality_section(summary, job.settings.enhance.scale, meaningful=job.notice is None)
        report = build_report(
            job,
            result.overview.failures,
            pd.DataFrame(columns=list(SUMMARY_COLUMNS)),
            DISTANCES_SCHEMA.empty_table().to_pandas(),
            internal_samples(job, result.overview.samples),
            [section],
        )
        return replace(result, report=str(report))

    return run_job(settings, "anonymize", work)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate_only import evaluate_pass

    settings = replace(settings_from_flags(vars(args)), input=args.originals)
    return run_job(settings, "evaluate", lambda job: evaluate_pass(job, args.anonymized))


def run_job(settings: JobSettings, mode: str, work: Callable[[Job], JobResult] | None = None) -> int:
    """Prepare the job, do `work` (by default: the gate, or one pass over --levels), print the closing lines.

    A failure after the start is recorded in run.json (the trace in private/) and is one line; an
    interruption is recorded as such; the folder's lock is released in every case.
    """
    job = prepare(settings, mode)
    try:
        result = (work or _default_work)(job)
    except CANNOT_RUN:
        raise
    except KeyboardInterrupt as err:
        err.kept = kept_outputs(job)  # the terminal's line and run.json say how much was kept
        record_failure(job, err, status="interrupted")
        raise
    except ClusterUnavailable as err:  # its message already says what to do; nothing ran
        record_failure(job, err)
        raise
    except LockLost as err:  # another driver has the folder now: its run.json is not ours to write
        raise JobFailed(str(err)) from err
    except Exception as err:  # a failure mid-job (disk full, a cluster gone): one line, resumable
        raise JobFailed(record_failure(job, err)) from err
    finally:
        job.close()
    print("\n".join(closing_lines(result)))
    if settings.strict and result.failed_rows:
        return EXIT_STRICT
    return 0


def _default_work(job: Job) -> JobResult:
    if job.settings.gate:
        from .gate import run_gate

        return run_gate(job)
    run_pass(job, job.settings.levels)
    return finalize(job)


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
            from .gate import finish_gate

            result = finish_gate(job)
        else:
            result = finalize(job)
    print(f"Report: {result.report}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Consent withdrawal: the images go from the run folder; only their count is recorded."""
    from .forget import forget, read_ids

    ids = read_ids(args.ids) if args.ids else []
    done = forget(args.dir, ids, args.identity)
    print(
        f"Forgot {done.images} images ({done.files} files, {done.rows} table rows removed); "
        f"{done.not_found} of the given ids or names matched no image of this run."
    )
    if done.images:
        print("Remove them from the input as well: a run over an input that still holds them makes them again.")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_settings

    return run_job(demo_settings(args.out, address=args.address, overwrite=args.overwrite), "run")


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import report

    if args.deepface_home:
        import os

        os.environ["DEEPFACE_HOME"] = args.deepface_home
    text, ok = report(
        model=args.model,
        recognizers=args.recognizers,
        engine=args.engine,
        address=args.address,
        out=args.out,
        detectors=(args.detector, args.region_detector),
    )
    print(text)
    return 0 if ok else 1


def cmd_weights(args: argparse.Namespace) -> int:
    from .weights import command

    return command(args)
