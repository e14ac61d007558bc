"""One job on Ray: find the inputs, skip what is done, stream read -> anonymize -> evaluate -> write.

driver: discover inputs, keyed anon_ids, what is still to do (pipeline.resume)  ->  Ray Data plan:
  rows (one per image, with the levels it still needs)
    -> AnonymizeStage actor pool (one model load per actor; writes images/)
    -> EvaluateStage actor pool (writes distances, private outputs and embeddings, manifest parts)
    -> driver counts progress and compacts finished shards
then the driver builds the attacks, summary.parquet, the report and run.json (pipeline.finalize).
Actor counts: pipeline.plan.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TextIO

from . import storage
from .cluster import ClusterInfo, connect, disconnect
from .config import JobSettings, override_statement, public_model
from .errors import error_row, problem, scrub
from .fingerprint import anonymize_device, defaults, device_keys, fingerprint
from .inputs import InputItem, InputSet, discover, identity_labels
from .landed import check_pass
from .layout import RunLayout, write_private_bytes
from .lock import run_lock
from .plan import ActorPlan, plan_actors
from .progress import Progress
from .provenance import (
    RefusedRerun,
    check_rerun,
    made_here,
    model_identity,
    now,
    read_json,
    recognizer_identity,
    record_fingerprint,
    versions,
    write_json_atomic,
)
from .records import (
    compact_finished,
    finish_batch,
    forget_pairs,
    remove_orphans,
    write_identities,
)
from .resume import ShardCompactor, shard_todo
from .secret import anon_id, keyed_levels, load_secret, output_key
from .shards import plan_shards
from .timings import Timings, since_start

if TYPE_CHECKING:
    from .lock import ObjectLock, RunLock


class JobError(RuntimeError):
    """The job cannot run; the message is one line that says why and what to do."""


class JobFailed(RuntimeError):
    """The job started and then failed; what is done is kept and a rerun resumes (exit status 1)."""


def record_failure(job: Job, err: BaseException, status: str = "failed") -> str:
    """Keep the whole failure in private/, a path-free line in run.json; return the line for the terminal."""
    import traceback

    if isinstance(err, KeyboardInterrupt):  # not "KeyboardInterrupt: ": what the interruption kept
        from .messages import interrupted_text

        line = f"job {status}: {interrupted_text(getattr(err, 'kept', None))}"
    else:
        line = f"job {status}: {root_cause(err)}"
    try:
        write_private_bytes(job.layout.failure_file, "".join(traceback.format_exception(err)).encode())
        record = read_json(job.layout.run_json)
        record.update(status=status, error=scrub(line), finished=now())
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
    inputs: InputSet | None
    secret: bytes
    cluster: ClusterInfo | None  # connected on first use: a finished job's rerun never starts Ray
    anon_ids: dict[str, str] = field(default_factory=dict)  # image_id -> anon_id
    stream: TextIO | None = None
    lock: RunLock | ObjectLock | None = None
    notice: str | None = None  # set when the numbers are not meaningful (project-made random weights)
    pairs_done_now: int = 0
    errors_now: int = 0
    # --samples K: the inputs hold one item per (image, sample), keyed by secret.output_key; key -> (image id,
    # sample). Empty with one sample: each item's key is its image id.
    samples: dict[str, tuple[str, int]] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)  # start-up milestones (pipeline.timings), for run.json
    # What determines the outputs (pipeline.fingerprint), checked against run.json before anything was written;
    # the anonymize device joins it once the cluster is known (ensure_cluster), then `device` is set.
    determining: dict = field(default_factory=dict)
    device: str | None = None

    def sample_of(self, key: str) -> tuple[str, int]:
        """(image id, sample index) of an input item's key."""
        return self.samples.get(key, (key, 0))

    @property
    def evaluated(self) -> bool:
        return self.mode in ("run", "evaluate")

    def close(self) -> None:
        """Disconnect from an embedded Ray and release the folder."""
        if getattr(self, "progress", None) is not None:  # a pass that did not finish: stop its ticker
            self.progress.stop()
        disconnect(self.cluster)
        if self.lock is not None:
            self.lock.close()


def prepare(settings: JobSettings, mode: str, stream: TextIO | None = None) -> Job:
    """Check everything that can be checked before Ray work starts; nothing is written until all pass.

    Order: the folder's lock (one driver per --out), inputs, weights, a rerun's settings against the
    recorded ones, and only then the folder, the secret and run.json.
    """
    if settings.input is None:
        raise JobError("no INPUT given: pass a folder of images or a Parquet dataset")
    imported = since_start()  # the command line and the driver's modules loaded
    layout = RunLayout.at(settings.out)
    layout.check_store()
    made = storage.is_local(layout.root) and not layout.root.exists()
    storage.make_run_folder(layout.root)
    lock = run_lock(layout.lock_file, shared_filesystem=settings.shared_filesystem_lock).acquire()
    try:
        job = _prepare_locked(settings, mode, layout, lock, stream)
        job.timings["imported"] = imported
        job.timings.mark("prepared")
        return job
    except BaseException:
        lock.close()
        if made:  # a refused run leaves nothing behind: not even the folder it made for its lock
            remove_if_empty(layout.root)
        raise


def remove_if_empty(folder) -> None:
    """Remove `folder` (made by this run) if the refusal left it empty (its lock file is gone on close)."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _prepare_locked(settings: JobSettings, mode: str, layout: RunLayout, lock: RunLock | ObjectLock, stream) -> Job:
    inputs = discover(
        settings.input, id_column=settings.id_column, image_column=settings.image_column, exclude=layout.root
    )
    labels = identity_labels(inputs, settings.identity_from, settings.identity_column)
    if settings.deepface_home:
        os.environ["DEEPFACE_HOME"] = settings.deepface_home
    # Fail here, in one line, rather than in every actor (which Ray would restart forever); with --weights-from,
    # fill this node's weights from the store first (pipeline.weights).
    from .weights import prepare_job_weights

    prepare_job_weights(settings, mode)
    model = model_identity(settings.sampler) if mode != "evaluate" else None
    recognizers = recognizer_identity(settings.evaluation) if mode != "anonymize" else None
    device = _device_before_cluster(settings) if mode != "evaluate" else None
    determining = fingerprint(settings, mode, model, recognizers, device)
    if not settings.overwrite:
        check_rerun(
            read_json(layout.run_json), determining, has_outputs=layout.has_outputs(), defaults=defaults(settings)
        )
    layout.prepare(settings.overwrite)
    secret = load_secret(layout, settings.secret_file)
    samples = with_samples(inputs, settings.samples if mode != "evaluate" else 1)
    job = Job(settings, mode, layout, samples.inputs, secret, None, stream=stream, lock=lock)
    job.samples, job.determining, job.device = samples.of, determining, device
    job.anon_ids = {item.image_id: anon_id(secret, item.image_id) for item in job.inputs.items}
    write_identities(
        layout,
        (
            (job.anon_ids[i.image_id], image, i.source, labels.get(image), sample)
            for i in job.inputs.items
            for image, sample in (job.sample_of(i.image_id),)
        ),
    )
    job.notice = DEMO_NOTICE if settings.demo or made_here(model, recognizers) else None
    _start_record(job, model, recognizers, determining)
    return job


@dataclass(frozen=True)
class Samples:
    inputs: InputSet
    of: dict[str, tuple[str, int]]


def with_samples(inputs: InputSet, k: int) -> Samples:
    """The inputs with one item per (image, local sample): sample 0 keeps the image's id as its key (so one
    sample names and seeds outputs as before), sample s > 0 is keyed by `output_key(id, s)`. Everything keyed
    by item (anon_ids, shards, resume, the gate's rounds) then works per sample."""
    if k == 1:
        return Samples(inputs, {})
    items, of = [], {}
    for item in inputs.items:
        for sample in range(k):
            key = output_key(item.image_id, sample)
            items.append(replace(item, image_id=key))
            of[key] = (item.image_id, sample)
    return Samples(replace(inputs, items=tuple(items)), of)


def _start_record(job: Job, model: dict | None, recognizers: dict | None, determining: dict) -> None:
    record = read_json(job.layout.run_json)
    settings = job.settings
    weights = (model or {}).get("weights_sha256")
    record.update(
        {
            "command": job.mode,
            "settings": settings.public_dict(weights),
            "versions": versions(),
            "started": now(),
            "finished": None,
            "status": "running",
            "error": None,
        }
    )
    record_fingerprint(record, determining, defaults(settings))
    if model is not None:
        record["model"] = {**model, "model": public_model(model["model"], weights)}
    # A gate-policy override opens run.json ("_" sorts before every other key): pipeline.config.GATE_OVERRIDES.
    record.pop("_gate_override", None)
    statement = override_statement(settings)
    if statement:
        record["_gate_override"] = {"rules": list(settings.overrides_in_effect()), "statement": statement}
    if recognizers is not None:
        record["recognizers"] = recognizers
    record.pop("notice", None)
    if job.notice:
        record["notice"] = job.notice
    record.setdefault("first_started", record["started"])
    write_json_atomic(job.layout.run_json, record)


DEMO_NOTICE = (
    "These images and numbers are NOT meaningful: they were made with random-weight models that boomerang "
    "generated (a tiny diffusion model and/or random-weight face recognizers) and say nothing about real anonymity."
)


def _device_before_cluster(settings: JobSettings) -> str | None:
    """The anonymize actors' device where the settings alone decide it (--device, or an explicit GPU share);
    None when it depends on the cluster's GPUs, which the driver learns only when there is work."""
    if settings.sampler.device or settings.gpus_per_worker is not None:
        return anonymize_device(settings.sampler.device, settings.gpus_per_worker or 0.0)
    return None


def _record_device(job: Job, actors: ActorPlan, record: dict) -> None:
    """Once the cluster is known: the device the anonymize actors will use joins the fingerprint, and a rerun
    whose device or dtype differs from the recorded ones is refused before any work is sent."""
    if job.mode == "evaluate":
        return
    job.device = anonymize_device(job.settings.sampler.device, actors.gpus_per_anonymize)
    job.determining = {**job.determining, **device_keys(job.settings.sampler, job.device)}
    if not job.settings.overwrite:
        try:
            check_rerun(record, job.determining, has_outputs=job.layout.has_outputs(), defaults=defaults(job.settings))
        except RefusedRerun as err:  # nothing was sent; the record says so rather than "running"
            record.update(status="refused", error=scrub(str(err)), finished=now())
            write_json_atomic(job.layout.run_json, record)
            raise
    record_fingerprint(record, job.determining, defaults(job.settings))


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
        actors = actor_plan(job)
        record["ray"]["actors"] = {
            "anonymize": actors.anonymize,
            "evaluate": actors.evaluate,
            "gpus_per_anonymize": actors.gpus_per_anonymize,
            "gpus_per_evaluate": actors.gpus_per_evaluate,
        }
        _record_device(job, actors, record)
        write_json_atomic(job.layout.run_json, record)
    return job.cluster


def run_pass(job: Job, levels: tuple[float, ...], image_ids: set[str] | None = None, label: str = "") -> int:
    """Anonymize (and evaluate) every (image, level) pair not yet done; returns pairs done.

    Done means a manifest row (and, for evaluated jobs, distance rows), except error rows that a rerun
    retries (pipeline.errors): transient ones, input errors whose file has changed since, and every
    error with --retry-errors. Planning reads one shard at a time (pipeline.resume).
    """
    layout = job.layout
    shards = plan_shards(layout, job.anon_ids.values(), job.settings.shard_size)
    remove_orphans(layout, evaluated=job.evaluated)
    compact_finished(layout)  # a killed run's finished batches: from here on each shard is one file
    by_shard: dict[int, list[InputItem]] = defaultdict(list)
    for item in job.inputs.items:
        if image_ids is None or item.image_id in image_ids:
            by_shard[shards.of(job.anon_ids[item.image_id])].append(item)
    work: list[dict] = []
    problems: list[tuple[InputItem, float]] = []
    planned: Counter = Counter()
    expected: dict[int, set[tuple[str, float]]] = {}  # the pass's pairs by shard, checked once it is done
    for shard, items in sorted(by_shard.items()):
        seen_now = {job.anon_ids[i.image_id]: (i.size, i.mtime) if i.size is not None else None for i in items}
        todo_by_id, retry = shard_todo(
            layout, shard, seen_now, levels, evaluated=job.evaluated, retry_errors=job.settings.retry_errors
        )
        forget_pairs(layout, retry)
        for item in items if todo_by_id else ():
            aid = job.anon_ids[item.image_id]
            todo = todo_by_id.get(aid)
            if not todo:
                continue
            planned[shard] += len(todo)
            expected.setdefault(shard, set()).update((aid, float(level)) for level in todo)
            if item.problem:
                problems += [(item, level) for level in todo]
            else:
                work.append(work_row(job, item, aid, todo))
    total = sum(planned.values())
    if total == 0:
        return 0
    if work:
        ensure_cluster(job)
        job.timings.mark("ray")
        # Shard by shard, so that shards finish (and are compacted) one after another instead of all at the
        # end; within a shard in input order, as before sharding.
        order = {item.image_id: i for i, item in enumerate(job.inputs.items)}
        work.sort(key=lambda w: (shards.of(w["anon_id"]), order[w["key"]]))
    compactor = ShardCompactor(layout, planned)
    progress = Progress(total, label or job.mode, stream=job.stream)
    job.progress = progress  # what an interruption kept (pipeline.messages)
    if problems:
        compactor.update(_write_problems(job, problems))
        progress.update(len(problems), len(problems))
    if work:
        for batch in _plan(job, work).iter_batches(batch_format="pandas", batch_size=None):
            job.timings.mark("first_output")
            progress.update(len(batch), int((batch["status"] != "ok").sum()))
            compactor.update(batch)
    compactor.finish()
    check_pass(layout, expected, evaluated=job.evaluated)  # every pair's rows and image landed (pipeline.landed)
    job.timings.mark("pass_done")
    progress.close()
    job.pairs_done_now += progress.done
    job.errors_now += progress.errors
    job.progress = None
    return progress.done


def work_row(job: Job, item: InputItem, aid: str, levels) -> dict:
    """One dataset row for the anonymize stage: what to read, its levels, and per level the output's seed and
    sub-key (pipeline.secret), derived here: the run's secret never leaves the driver."""
    image_id, sample = job.sample_of(item.image_id)
    return {
        "key": item.image_id,
        "image_id": image_id,
        "sample": sample,
        "anon_id": aid,
        "source": item.source,
        "source_size": item.size,
        "source_mtime": item.mtime,
        "problem": None,
        **keyed_levels(job.secret, job.settings.seed, image_id, levels, sample),
    }


def anonymize_config(job: Job, threads: int | None):
    """What every anonymize actor is constructed with (pickled to each): no secret."""
    from .stages import AnonymizeConfig

    settings = job.settings
    return AnonymizeConfig(
        str(job.layout.root), settings.max_pixels, threads, settings.region, settings.enhance, settings.weights_from
    )


def _write_problems(job: Job, problems: list[tuple[InputItem, float]]):
    """Inputs known bad before reading (bad names, duplicate ids) still get their rows."""
    rows = [
        error_row(
            {"anon_id": job.anon_ids[item.image_id], "sample": job.sample_of(item.image_id)[1]},
            level,
            problem(item.problem),
        )
        for item, level in problems
    ]
    distance_rows = None
    if job.evaluated:
        from evaluation import error_rows

        distance_rows = [
            d for r in rows for d in error_rows(r["anon_id"], r["level"], None, r["error"], job.settings.evaluation)
        ]
    return finish_batch(job.layout, rows, distance_rows)


CPU_THREADS_PER_ACTOR = 1
TASK_CPUS = 0.25


def _plan(job: Job, work: list[dict]):
    import ray.data
    from ray.data import ActorPoolStrategy

    # The stages import torch and diffusers: only a job that runs them pays for that.
    from .stages import AnonymizeStage, EvaluateConfig, EvaluateStage, WriteStage

    settings = job.settings
    actors = actor_plan(job)
    gpus = actors.gpus_per_anonymize
    if job.inputs.kind == "folder":
        ds = ray.data.from_items(work)
    else:
        # Light tasks, a quarter CPU each: the actors of a machine-filling plan (pipeline.plan) hold the
        # rest, and a task that asked for a whole CPU would wait for one forever.
        ds = ray.data.read_parquet(
            job.inputs.uri,
            columns=[job.inputs.id_column, job.inputs.image_column],
            num_cpus=TASK_CPUS,
        )
        by_id: dict[str, list[dict]] = defaultdict(list)  # an image's samples share its Parquet row
        for w in work:
            by_id[w["image_id"]].append(w)
        ds = ds.map_batches(
            _attach_work,
            fn_kwargs={
                "work": by_id,
                "id_column": job.inputs.id_column,
                "image_column": job.inputs.image_column,
            },
            batch_format="pandas",
            num_cpus=TASK_CPUS,
        )
    # Fractional CPU reservations (pipeline.plan): whole-CPU actors plus Ray's own tasks starve each other.
    cpu_actor = actors.cpus_per_actor
    # One torch thread per CPU actor; scale with --workers. A thread count that followed the worker
    # count would change float reduction order, so --workers would change the bytes; and more threads
    # than cores across the actors makes OpenMP spin (10x slower on a 2-core machine).
    threads = None if gpus else CPU_THREADS_PER_ACTOR
    # The device and dtype recorded in the fingerprint, pinned: an actor without a GPU share would otherwise
    # take any GPU its node has (Ray leaves CUDA_VISIBLE_DEVICES alone for it).
    device = job.device or anonymize_device(settings.sampler.device, gpus)
    sampler = settings.sampler
    if device == "cpu" or settings.sampler.device:
        sampler = replace(sampler, device=device, dtype=device_keys(sampler, device)["sampler.dtype"])
    # else a GPU share: load_model takes the GPU Ray made visible to the actor, the device recorded (pinning
    # "cuda" would fail on a node whose GPUs are logical only, as in the multi-node tests).
    ds = ds.map_batches(
        AnonymizeStage,
        fn_constructor_args=(sampler, anonymize_config(job, threads)),
        batch_size=settings.batch_size,
        batch_format="pandas",
        compute=ActorPoolStrategy(size=actors.anonymize),
        num_gpus=gpus,
        num_cpus=cpu_actor,
    )
    if job.evaluated:
        ds = ds.map_batches(
            EvaluateStage,
            fn_constructor_args=(
                settings.evaluation,
                EvaluateConfig(
                    str(job.layout.root),
                    settings.max_pixels,
                    os.environ.get("DEEPFACE_HOME"),
                    1,
                    settings.region,
                    settings.weights_from,
                ),
            ),
            batch_size=settings.eval_batch_size,
            batch_format="pandas",
            compute=ActorPoolStrategy(size=actors.evaluate),
            # A share of a GPU: Ray makes it the actor's visible device, and deepface's PyTorch recognizers
            # move themselves to it (cuda:0 when one is visible).
            num_gpus=actors.gpus_per_evaluate,
            num_cpus=cpu_actor,
        )
    else:
        ds = ds.map_batches(
            WriteStage,
            fn_constructor_args=(str(job.layout.root),),
            batch_format="pandas",
            # Nothing is evaluated: each anonymize batch is written (made durable) as it comes.
            batch_size=settings.batch_size,
            compute=ActorPoolStrategy(size=1),
            num_cpus=cpu_actor,
        )
    return ds


def actor_plan(job: Job) -> ActorPlan:
    """The job's actors on its cluster (pipeline.plan), as `boomerang doctor` prints them."""
    settings = job.settings
    return plan_actors(
        job.cluster.cpus,
        job.cluster.gpus,
        workers=settings.workers,
        eval_workers=settings.eval_workers,
        gpus_per_worker=settings.gpus_per_worker,
        eval_gpus_per_worker=settings.eval_gpus_per_worker,
        evaluated=job.evaluated,
    )


def _attach_work(batch, work: dict, id_column: str, image_column: str):
    """Parquet rows -> stage rows: keep the ids still to do and add their anon_id and levels."""
    import pandas as pd

    ids = batch[id_column].astype(str)
    keep = ids.isin(work.keys())
    rows = [dict(w, image=img) for i, img in zip(ids[keep], batch[image_column][keep], strict=True) for w in work[i]]
    columns = [
        "key",
        "image_id",
        "sample",
        "anon_id",
        "source",
        "source_size",
        "source_mtime",
        "problem",
        "levels",
        "seeds",
        "subkeys",
        "image",
    ]
    return pd.DataFrame(rows, columns=columns)
