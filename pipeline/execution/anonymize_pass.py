"""The pair source of a run: what each input still needs (shard by shard, from the shard's marker where it says
"all done"; error rows a rerun retries), rows for inputs known bad before reading, and the Ray Data plan
read -> anonymize (-> evaluate, or write) that the driver (pipeline.execution.driver) streams.

Actor counts: pipeline.execution.actors. Workers never receive the run's secret: each row carries its outputs'
seeds and sub-keys, derived here (pipeline.folder.secret)."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pipeline.execution.discovery import items_of
from pipeline.execution.driver import drive, evaluate_stage, start_pass
from pipeline.execution.inputs import InputItem
from pipeline.execution.job import Job, actor_plan
from pipeline.folder.secret import keyed_levels
from pipeline.settings.fingerprint import anonymize_device, device_keys
from pipeline.tables.batch_parts import finish_batch
from pipeline.tables.compaction import forget_pairs
from pipeline.tables.landed import check_pass
from pipeline.tables.resume import shard_todo
from pipeline.tables.row_errors import error_row, problem
from pipeline.tables.work_spool import WorkSpool


def run_pass(job: Job, levels: tuple[float, ...], label: str = "") -> int:
    """Anonymize (and evaluate) every (image, level) pair not yet done; returns pairs done.

    Done means a manifest row (and, for evaluated jobs, distance rows), except error rows that a rerun
    retries (pipeline.tables.row_errors): transient ones, input errors whose file has changed since, and every
    error with --retry-errors. Planning reads one shard at a time (pipeline.tables.resume).
    """
    return run_planned(job, plan_pass(job, levels), label)


def run_planned(job: Job, plan: PassPlan, label: str = "") -> int:
    """Do a planned pass (`plan_pass`); returns pairs done. Its work rows are removed whatever happens."""
    try:
        return drive(
            job,
            plan.planned,
            known=(lambda: _write_problems(job, plan.problems)) if plan.problems else None,
            stream=(lambda: _plan(job, plan.spool)) if plan.spool.rows else None,
            check=lambda: check_pass(job.layout, plan.expected(), evaluated=job.evaluated),
            label=label,
        )
    finally:
        plan.spool.remove()


@dataclass
class PassPlan:
    """What a pass will do: pairs per shard, the work rows (on disk, `spool`) and the inputs that cannot be read."""

    spool: WorkSpool
    items: int = 0  # inputs the pass considered (all, or those `skip` left), done or not
    planned: Counter = field(default_factory=Counter)
    problems: list[tuple[InputItem, float]] = field(default_factory=list)
    problem_pairs: dict[int, set[tuple[str, float]]] = field(default_factory=dict)  # by shard

    def expected(self):
        """The pass's pairs, a shard at a time: checked once it is done (pipeline.tables.landed)."""
        for shard in sorted(self.planned):
            yield shard, self.spool.pairs(shard) | self.problem_pairs.get(shard, set())


def plan_pass(job: Job, levels: tuple[float, ...], skip: Callable[[int], set[str]] | None = None) -> PassPlan:
    """The pass's plan, a shard at a time: the driver holds one shard's items and work rows (the rest are in
    private/.work), plus the pairs of inputs that cannot be read. `skip(shard)`: anon_ids of that shard to
    leave out (the gate's images settled at lower rungs, pipeline.release.gate)."""
    layout = job.layout
    shards = start_pass(job)
    plan = PassPlan(WorkSpool(layout))
    # Shard by shard, so that shards finish (and are compacted) one after another instead of all at the end;
    # within a shard in input order, as before sharding. One shard's items are read at a time.
    for shard, items in shard_items(job, shards, skip):
        plan.items += len(items)
        seen_now = {aid: (i.size, i.mtime) if i.size is not None else None for i, aid in items}
        todo_by_id, retry = shard_todo(
            layout, shard, seen_now, levels, evaluated=job.evaluated, retry_errors=job.settings.retry_errors
        )
        forget_pairs(layout, retry)
        rows = []
        for item, aid in items if todo_by_id else ():
            todo = todo_by_id.get(aid)
            if not todo:
                continue
            plan.planned[shard] += len(todo)
            if item.problem:
                plan.problems += [(item, level) for level in todo]
                plan.problem_pairs.setdefault(shard, set()).update((aid, float(level)) for level in todo)
            else:
                rows.append(work_row(job, item, aid, todo))
        plan.spool.add(shard, rows)
    return plan


def shard_items(job: Job, shards, skip: Callable[[int], set[str]] | None):
    """(shard, [(item, anon_id)] in input order) for each shard with items of this pass: from the job's lists
    (pipeline.tables.input_lists, one shard read at a time), or from `job.inputs.items` for a Job built without."""
    if job.index is not None:
        for shard in sorted(job.index.counts):
            items = [(item, row["anon_id"]) for item, row in items_of(job.index.shard_list(shard))]
            if skip is not None:
                left_out = skip(shard)
                items = [(item, aid) for item, aid in items if aid not in left_out]
            if items:
                yield shard, items
        return
    by_shard: dict[int, list] = defaultdict(list)
    for item in job.inputs.items:
        aid = job.anon_ids[item.image_id]
        by_shard[shards.of(aid)].append((item, aid))
    for shard, items in sorted(by_shard.items()):
        if skip is not None:
            left_out = skip(shard)
            items = [(item, aid) for item, aid in items if aid not in left_out]
        if items:
            yield shard, items


def work_row(job: Job, item: InputItem, aid: str, levels) -> dict:
    """One dataset row for the anonymize stage: what to read, its levels, and per level the output's seed and
    sub-key (pipeline.folder.secret), derived here: the run's secret never leaves the driver."""
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
    from pipeline.execution.anonymize_stage import AnonymizeConfig

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


def work_blocks(spool: WorkSpool) -> list:
    """The spool's rows as Ray Data blocks in the object store, read a shard at a time: as many blocks as
    `ray.data.from_items` would make of them (about 200, one row each when fewer: every actor gets work), each
    a copy of its rows (a pickled slice would carry its whole table)."""
    import ray

    blocks = max(200, 2 * int(ray.cluster_resources().get("CPU", 1)))
    size = max(1, -(-spool.rows // blocks))
    refs = []
    for table in spool.tables():
        for start in range(0, len(table), size):
            refs.append(ray.put(table.take(list(range(start, min(start + size, len(table)))))))
    return refs


def _plan(job: Job, spool: WorkSpool):
    """The Ray Data plan of this pass's work rows: read (Parquet rows, or paths the actors read), anonymize,
    then evaluate (or write)."""
    import ray.data
    from ray.data import ActorPoolStrategy

    # The stages import torch and diffusers: only a job that runs them pays for that.
    from pipeline.execution.anonymize_stage import AnonymizeStage, WriteStage

    settings = job.settings
    actors = actor_plan(job)
    gpus = actors.gpus_per_anonymize
    if job.inputs.kind == "folder":
        ds = ray.data.from_arrow_refs(work_blocks(spool))
    else:
        # Light tasks, a quarter CPU each: the actors of a machine-filling plan (pipeline.execution.actors) hold the
        # rest, and a task that asked for a whole CPU would wait for one forever.
        ds = ray.data.read_parquet(
            job.inputs.uri,
            columns=[job.inputs.id_column, job.inputs.image_column],
            num_cpus=TASK_CPUS,
        )
        # An image's samples share its Parquet row. Every task is handed the whole map: a Parquet input's work is
        # still held whole on the driver while the plan is built (docs/benchmarks.md).
        by_id: dict[str, list[dict]] = defaultdict(list)
        for table in spool.tables():
            for w in table.to_pylist():
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
    # Fractional CPU reservations (pipeline.execution.actors): whole-CPU actors plus Ray's own tasks starve each other.
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
        deepface_home = os.environ.get("DEEPFACE_HOME")
        ds = evaluate_stage(
            ds, job, actors=actors.evaluate, gpus=actors.gpus_per_evaluate, cpus=cpu_actor, deepface_home=deepface_home
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


def _attach_work(batch, work: dict, id_column: str, image_column: str):
    """Parquet rows -> stage rows: keep the ids still to do and add their anon_id and levels."""
    import pandas as pd

    from pipeline.execution.ray_batches import arrow_ready

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
    return arrow_ready(pd.DataFrame(rows, columns=columns))
