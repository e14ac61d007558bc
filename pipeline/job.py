"""One job on Ray: find the inputs, skip what is done, stream read -> anonymize -> evaluate -> write.

driver: discover inputs, salt, resume set  ->  Ray Data plan:
  rows (one per image, with the levels it still needs)
    -> AnonymizeStage actor pool (one model load per actor; writes images/)
    -> EvaluateStage actor pool (writes evaluation/distances, private/identities, manifest parts)
    -> driver counts progress
then the driver builds summary.parquet, the report and run.json (pipeline.finalize).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TextIO

from .cluster import ClusterInfo, connect
from .config import JobSettings
from .inputs import InputItem, InputSet, discover
from .layout import RunLayout, anon_id
from .progress import Progress
from .provenance import model_identity, now, read_json, versions, write_json_atomic
from .records import done_pairs, remove_orphans
from .stages import AnonymizeConfig, AnonymizeStage, EvaluateConfig, EvaluateStage, WriteStage, finish_batch


class JobError(RuntimeError):
    """The job cannot run; the message is one line that says why and what to do."""


class JobFailed(RuntimeError):
    """The job started and then failed; what is done is kept and a rerun resumes (exit status 1)."""


def record_failure(job: Job, err: BaseException) -> str:
    """Write the failure and its trace into run.json; return the one line for the terminal."""
    import traceback

    line = f"job failed: {root_cause(err)}"
    try:
        record = read_json(job.layout.run_json)
        record.update(status="failed", error=line, traceback="".join(traceback.format_exception(err))[-20000:])
        write_json_atomic(job.layout.run_json, record)
    except OSError:  # the disk may be what failed; the one line still reaches the terminal
        pass
    return f"{line}; what finished is kept: fix the cause and run the same command again to resume"


# "OSError: [Errno 28] No space left on device" inside the worker traceback that Ray carries as text.
_ERROR_LINE = re.compile(r"^(\w+(?:Error|Exception|Interrupt|Exit)): (.+)$", re.MULTILINE)
_RAY_WRAPPERS = {"UserCodeException", "RayTaskError", "RayActorError", "RaySystemError"}


def root_cause(err: BaseException) -> str:
    """The original error as one line: Ray ships a worker's exception only as traceback text."""
    for exc in _chain(err):
        for name, message in _ERROR_LINE.findall(str(exc)):
            if name not in _RAY_WRAPPERS:
                return f"{name}: {message.strip()[:300]}"
    last = _chain(err)[-1]
    return f"{type(last).__name__}: {' '.join(str(last).split())[:300]}"


def _chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while isinstance(err, BaseException) and err not in chain:
        chain.append(err)
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return chain


@dataclass
class Job:
    settings: JobSettings
    mode: str  # "run" | "anonymize" | "evaluate"
    layout: RunLayout
    inputs: InputSet
    salt: bytes
    cluster: ClusterInfo | None  # connected on first use: a finished job's rerun never starts Ray
    anon_ids: dict[str, str] = field(default_factory=dict)  # image_id -> anon_id
    stream: TextIO | None = None
    pairs_done_now: int = 0
    errors_now: int = 0

    @property
    def evaluated(self) -> bool:
        return self.mode in ("run", "evaluate")


def prepare(settings: JobSettings, mode: str, stream: TextIO | None = None) -> Job:
    """Check everything that can be checked before Ray work starts, then connect to Ray."""
    if settings.input is None:
        raise JobError("no INPUT given: pass a folder of images or a Parquet dataset")
    inputs = discover(settings.input, id_column=settings.id_column, image_column=settings.image_column)
    if settings.deepface_home:
        os.environ["DEEPFACE_HOME"] = settings.deepface_home
    model = None
    if mode != "evaluate":
        # Fail here, in one line, rather than in every actor (which Ray would restart forever).
        model = model_identity(settings.sampler)
    if mode != "anonymize":
        from evaluation import check_weights

        check_weights(settings.evaluation.recognizers, settings.evaluation.engine)
    layout = RunLayout.at(settings.out)
    layout.prepare(settings.overwrite)
    job = Job(settings, mode, layout, inputs, layout.salt(), None, stream=stream)
    job.anon_ids = {item.image_id: anon_id(job.salt, item.image_id) for item in inputs.items}
    _start_record(job, model)
    return job


def _start_record(job: Job, model: dict | None) -> None:
    record = read_json(job.layout.run_json)
    settings = job.settings
    record.update(
        {
            "command": job.mode,
            "settings": settings.public_dict(),
            "versions": versions(),
            "model": model,
            "started": now(),
            "finished": None,
            "status": "running",
        }
    )
    if settings.demo:
        record["notice"] = DEMO_NOTICE
    record.setdefault("first_started", record["started"])
    write_json_atomic(job.layout.run_json, record)


DEMO_NOTICE = (
    "DEMO RUN: tiny random-weight diffusion model and random-weight face recognizers on bundled sample "
    "faces. These images and numbers are NOT meaningful and say nothing about real anonymity."
)


def ensure_cluster(job: Job) -> ClusterInfo:
    """Connect to Ray (embedded or --address) when there is work, check GPUs, and record the cluster."""
    if job.cluster is None:
        cluster = connect(job.settings.address)
        gpus = job.settings.gpus_per_worker
        if gpus and cluster.gpus < gpus:
            raise JobError(
                f"--gpus-per-worker {gpus:g} needs GPUs but the Ray cluster has {cluster.gpus:g}; "
                "pass --gpus-per-worker 0 to run on CPUs"
            )
        job.cluster = cluster
        record = read_json(job.layout.run_json)
        record["ray"] = {"address": cluster.address, "cpus": cluster.cpus, "gpus": cluster.gpus, "nodes": cluster.nodes}
        write_json_atomic(job.layout.run_json, record)
    return job.cluster


def run_pass(job: Job, levels: tuple[float, ...], image_ids: set[str] | None = None, label: str = "") -> int:
    """Anonymize (and evaluate) every (image, level) pair not yet in the manifest; returns pairs done."""
    remove_orphans(job.layout, evaluated=job.evaluated)
    done = done_pairs(job.layout)
    work: list[dict] = []
    problems: list[tuple[InputItem, float]] = []
    for item in job.inputs.items:
        if image_ids is not None and item.image_id not in image_ids:
            continue
        aid = job.anon_ids[item.image_id]
        todo = [level for level in levels if (aid, level) not in done]
        if not todo:
            continue
        if item.problem:
            problems += [(item, level) for level in todo]
        else:
            work.append(
                {
                    "image_id": item.image_id,
                    "anon_id": aid,
                    "source": item.source,
                    "problem": None,
                    "levels": todo,
                }
            )
    total = sum(len(w["levels"]) for w in work) + len(problems)
    if total == 0:
        return 0
    if work:
        ensure_cluster(job)
    progress = Progress(total, label or job.mode, stream=job.stream)
    if problems:
        _write_problems(job, problems)
        progress.update(len(problems), len(problems))
    if work:
        for batch in _plan(job, work).iter_batches(batch_format="pandas", batch_size=None):
            progress.update(len(batch), int((batch["status"] != "ok").sum()))
    progress.close()
    job.pairs_done_now += progress.done
    job.errors_now += progress.errors
    return progress.done


def _write_problems(job: Job, problems: list[tuple[InputItem, float]]) -> None:
    """Inputs known bad before reading (bad names, duplicate ids) still get their rows."""
    rows = [
        {
            "anon_id": job.anon_ids[item.image_id],
            "image_id": item.image_id,
            "source": item.source,
            "level": level,
            "status": "error",
            "error": item.problem,
        }
        for item, level in problems
    ]
    distance_rows = None
    if job.evaluated:
        from evaluation import error_rows

        distance_rows = [
            d for r in rows for d in error_rows(r["anon_id"], r["level"], None, r["error"], job.settings.evaluation)
        ]
    finish_batch(job.layout, rows, distance_rows)


CPU_THREADS_PER_ACTOR = 1


def _plan(job: Job, work: list[dict]):
    import ray.data
    from ray.data import ActorPoolStrategy

    settings = job.settings
    gpus = settings.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if job.cluster.gpus > 0 else 0.0
    if job.inputs.kind == "folder":
        ds = ray.data.from_items(work)
    else:
        ds = ray.data.read_parquet(job.inputs.uri, columns=[job.inputs.id_column, job.inputs.image_column])
        by_id = {w["image_id"]: w for w in work}
        ds = ds.map_batches(
            _attach_work,
            fn_kwargs={
                "work": by_id,
                "id_column": job.inputs.id_column,
                "image_column": job.inputs.image_column,
            },
            batch_format="pandas",
        )
    # Fractional CPUs: on a small machine whole-CPU actors plus Ray's own tasks can starve each other.
    cpu_actor = 1.0 if gpus else 0.5
    # One torch thread per CPU actor; scale with --workers. A thread count that followed the worker
    # count would change float reduction order, so --workers would change the bytes; and more threads
    # than cores across the actors makes OpenMP spin (10x slower on a 2-core machine).
    threads = None if gpus else CPU_THREADS_PER_ACTOR
    ds = ds.map_batches(
        AnonymizeStage,
        fn_constructor_args=(
            settings.sampler,
            AnonymizeConfig(str(job.layout.root), settings.seed, settings.max_pixels, threads),
        ),
        batch_size=settings.batch_size,
        batch_format="pandas",
        compute=ActorPoolStrategy(size=settings.workers),
        num_gpus=gpus,
        num_cpus=cpu_actor,
    )
    if job.evaluated:
        ds = ds.map_batches(
            EvaluateStage,
            fn_constructor_args=(
                settings.evaluation,
                EvaluateConfig(str(job.layout.root), settings.max_pixels, os.environ.get("DEEPFACE_HOME"), 1),
            ),
            batch_size=settings.eval_batch_size,
            batch_format="pandas",
            compute=ActorPoolStrategy(size=settings.eval_workers),
            num_cpus=0.5,
        )
    else:
        ds = ds.map_batches(
            WriteStage,
            fn_constructor_args=(str(job.layout.root),),
            batch_format="pandas",
            batch_size=settings.eval_batch_size,
            compute=ActorPoolStrategy(size=1),
            num_cpus=0.25,
        )
    return ds


def _attach_work(batch, work: dict, id_column: str, image_column: str):
    """Parquet rows -> stage rows: keep the ids still to do and add their anon_id and levels."""
    import pandas as pd

    ids = batch[id_column].astype(str)
    keep = ids.isin(work.keys())
    rows = [dict(work[i], image=img) for i, img in zip(ids[keep], batch[image_column][keep], strict=True)]
    return pd.DataFrame(rows, columns=["image_id", "anon_id", "source", "problem", "levels", "image"])
