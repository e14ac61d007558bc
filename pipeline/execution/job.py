"""A job: its settings, folder, inputs and secret, prepared and checked before anything is written; run.json's
start and failure records; the Ray cluster, joined when there is work.

Passes over the job: pipeline.execution.driver (with the pair sources anonymize_pass and evaluate_pairs); after
them pipeline.outputs.finalize builds the attacks, summary.parquet, the report and run.json's end record."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from pipeline.execution.actors import ActorPlan, plan_actors
from pipeline.execution.cluster import ClusterInfo, connect, disconnect
from pipeline.execution.discovery import attach_index, index_inputs, label_column
from pipeline.execution.inputs import InputSet, describe
from pipeline.execution.timings import Timings, since_start
from pipeline.folder import storage
from pipeline.folder.layout import RunLayout, write_private_bytes
from pipeline.folder.lock import run_lock
from pipeline.folder.provenance import (
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
from pipeline.folder.secret import load_secret, sample_of_key
from pipeline.settings.config import JobSettings, build_settings, flatten, public_model
from pipeline.settings.fingerprint import (
    ANONYMIZE_AND_EVALUATE,
    ANONYMIZE_ONLY,
    EVALUATE,
    EVALUATE_ONLY,
    JOB_STAGES,
    anonymize_device,
    defaults,
    device_keys,
    fingerprint,
    stages_of_mode,
)
from pipeline.settings.gate_policy import override_statement
from pipeline.tables.identities import write_identities_from
from pipeline.tables.input_lists import InputIndex, remove_lists
from pipeline.tables.row_errors import scrub

if TYPE_CHECKING:
    from pipeline.folder.lock import RunLock
    from pipeline.folder.object_lock import ObjectLock


class JobError(RuntimeError):
    """The job cannot run; the message is one line that says why and what to do."""


class JobFailed(RuntimeError):
    """The job started and then failed; what is done is kept and a rerun resumes (exit status 1)."""


def record_failure(job: Job, err: BaseException, status: str = "failed") -> str:
    """Keep the whole failure in private/, a path-free line in run.json; return the line for the terminal."""
    import traceback

    if isinstance(err, KeyboardInterrupt):  # not "KeyboardInterrupt: ": what the interruption kept
        from pipeline.execution.messages import interrupted_text

        line = f"job {status}: {interrupted_text(getattr(err, 'kept', None))}"
    else:
        line = f"job {status}: {public_cause(err)}"
    kept = ""
    try:
        write_private_bytes(job.layout.failure_file, "".join(traceback.format_exception(err)).encode())
        kept = " (the whole error is in private/failure.txt)"
        record = read_json(job.layout.run_json)
        record.update(status=status, error=scrub(line), finished=now())
        write_json_atomic(job.layout.run_json, record)
    except OSError:  # the disk may be what failed; the one line still reaches the terminal
        pass
    return f"{line}{kept}; what finished is kept: fix the cause and run the same command again to resume"


_ERRNO = re.compile(r"\[Errno (\d+)\]")


def public_cause(err: BaseException) -> str:
    """`root_cause` as the terminal may show it (docs/privacy.md, *Errors*): the exception's type and, for an
    OS error, the C library's own text for its errno (`No space left on device`), never the exception's own
    words: they quote the file (for LFW, a person's name), and the terminal ends up in logs others read."""
    name, _, message = root_cause(err).partition(": ")
    number = _ERRNO.search(message)
    return f"{name}: [Errno {number.group(1)}] {os.strerror(int(number.group(1)))}" if number else name


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
    # Which stages its passes run: ANONYMIZE_AND_EVALUATE, ANONYMIZE_ONLY or EVALUATE_ONLY
    # (pipeline.settings.fingerprint), as run.json records them under "command".
    stages: str
    layout: RunLayout
    inputs: InputSet | None
    secret: bytes | None  # None: not loaded (a finished run's rebuild reads private/secret where it needs it)
    cluster: ClusterInfo | None  # connected on first use: a finished job's rerun never starts Ray
    # image_id -> anon_id: a dict, or for a job that discovered its inputs pipeline.execution.discovery.KeyedIds
    # (each computed, none held), whose items are listed on disk, one shard at a time (`index`).
    anon_ids: dict[str, str] = field(default_factory=dict)
    stream: TextIO | None = None
    lock: RunLock | ObjectLock | None = None
    notice: str | None = None  # set when the numbers are not meaningful (project-made random weights)
    pairs_done_now: int = 0
    errors_now: int = 0
    # --samples K: the inputs hold one item per (image, sample), keyed by secret.output_key; key -> (image id,
    # sample). Empty with one sample: each item's key is its image id.
    samples: dict[str, tuple[str, int]] = field(default_factory=dict)
    sampled: bool = False  # --samples K > 1: a key not in `samples` is read as secret.output_key made it
    index: InputIndex | None = None  # the discovered inputs' lists (pipeline.tables.input_lists)
    timings: Timings = field(default_factory=Timings)  # start-up milestones (pipeline.execution.timings), for run.json
    # What determines the outputs (pipeline.settings.fingerprint), checked against run.json before anything was written;
    # the anonymize device joins it once the cluster is known (ensure_cluster), then `device` is set.
    determining: dict = field(default_factory=dict)
    device: str | None = None
    progress: object = None  # the running pass's Progress (pipeline.execution.driver), None between passes

    def sample_of(self, key: str) -> tuple[str, int]:
        """(image id, sample index) of an input item's key."""
        if key in self.samples:
            return self.samples[key]
        return sample_of_key(key) if self.sampled else (key, 0)

    @property
    def evaluated(self) -> bool:
        return EVALUATE in stages_of_mode(self.stages)

    def close(self) -> None:
        """Disconnect from an embedded Ray and release the folder."""
        if self.progress is not None:  # a pass that did not finish: stop its ticker
            self.progress.stop()
        disconnect(self.cluster)
        if self.index is not None:  # the inputs are listed again by the next run
            remove_lists(self.layout)
            self.index = None
        if self.lock is not None:
            self.lock.close()


def prepare(settings: JobSettings, stages: str, stream: TextIO | None = None) -> Job:
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
        job = _prepare_locked(settings, stages, layout, lock, stream)
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


def _prepare_locked(settings: JobSettings, stages: str, layout: RunLayout, lock: RunLock | ObjectLock, stream) -> Job:
    inputs = describe(
        settings.input, id_column=settings.id_column, image_column=settings.image_column, exclude=layout.root
    )
    label_column(inputs, settings.identity_column)
    if settings.deepface_home:
        os.environ["DEEPFACE_HOME"] = settings.deepface_home
    # Fail here, in one line, rather than in every actor (which Ray would restart forever); with --weights-from,
    # fill this node's weights from the store first (pipeline.weights).
    from pipeline.weights.store import prepare_job_weights

    prepare_job_weights(settings, stages)
    model = model_identity(settings.sampler) if stages != EVALUATE_ONLY else None
    recognizers = recognizer_identity(settings.evaluation) if stages != ANONYMIZE_ONLY else None
    device = _device_before_cluster(settings) if stages != EVALUATE_ONLY else None
    determining = fingerprint(settings, stages, model, recognizers, device)
    if not settings.overwrite:
        check_rerun(
            read_json(layout.run_json), determining, has_outputs=layout.has_outputs(), defaults=defaults(settings)
        )
    layout.prepare(settings.overwrite)
    secret = load_secret(layout, settings.secret_file)
    samples = settings.samples if stages != EVALUATE_ONLY else 1
    job = Job(settings, stages, layout, inputs, secret, None, stream=stream, lock=lock)
    job.determining, job.device = determining, device
    # Listed, keyed and sharded in batches: the driver keeps a count per shard (pipeline.execution.discovery).
    index = index_inputs(
        layout,
        inputs,
        secret,
        shard_size=settings.shard_size,
        samples=samples,
        exclude=layout.root,
        identity_from=settings.identity_from,
        identity_column=settings.identity_column,
    )
    attach_index(job, index, samples)
    write_identities_from(layout, index)  # a shard at a time
    job.notice = DEMO_NOTICE if settings.demo or made_here(model, recognizers) else None
    _start_record(job, model, recognizers, determining)
    return job


def _start_record(job: Job, model: dict | None, recognizers: dict | None, determining: dict) -> None:
    record = read_json(job.layout.run_json)
    settings = job.settings
    weights = (model or {}).get("weights_sha256")
    record.update(
        {
            "command": job.stages,
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
    # A gate-policy override opens run.json ("_" sorts before every other key): pipeline.settings.gate_policy.
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
    if job.stages == EVALUATE_ONLY:
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


def recorded_settings(layout: RunLayout, record: dict) -> JobSettings:
    """The settings of the run whose run.json is `record`, for a command that works on its folder afterwards."""
    values = flatten(record["settings"])
    values["out"] = str(layout.root)
    return build_settings(values)


def finished_job(settings: JobSettings, layout: RunLayout, record: dict, lock, secret: bytes | None = None) -> Job:
    """A Job over a run folder that already holds a run, to rebuild what derives from its tables (`boomerang
    report`, `forget`): its stages as run.json records them; no inputs, no cluster; without `secret`, what needs
    the secret (the release names) reads private/secret."""
    stages = record.get("command") if record.get("command") in JOB_STAGES else ANONYMIZE_AND_EVALUATE
    return Job(
        settings, stages, layout, inputs=None, secret=secret, cluster=None, lock=lock, notice=record.get("notice")
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


def actor_plan(job: Job) -> ActorPlan:
    """The job's actors on its cluster (pipeline.execution.actors), as `boomerang doctor` prints them."""
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
