"""The one pass driver: a pair source says what is still to do, the driver streams it and keeps the tables.

A pass over one output folder, whichever its source (pipeline.execution.anonymize_pass: inputs anonymized and,
in a run, evaluated; pipeline.execution.evaluate_pairs: another tool's outputs against their originals):

1. `start_pass`: the folder's shards fixed (pipeline.tables.shards), orphans of killed batches removed and a
   killed run's finished batches compacted, so that from here on each shard is one file.
2. The source plans, shard by shard: pairs per shard, rows known to fail before any reading (written at once),
   and a Ray Data plan for the rest.
3. `drive`: rows written by the stages stream back to the driver, which counts progress and compacts each shard
   as its last pair arrives (pipeline.tables.resume.ShardCompactor), then closes the pass.

`evaluate_stage` is the evaluation stage's wiring, the same for both sources.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline.execution.job import Job, ensure_cluster
from pipeline.execution.progress import Progress
from pipeline.tables.batch_parts import remove_orphans
from pipeline.tables.compaction import compact_finished
from pipeline.tables.resume import ShardCompactor
from pipeline.tables.shards import Shards, plan_shards

if TYPE_CHECKING:
    import pandas as pd


def start_pass(job: Job) -> Shards:
    """The folder's shards, with no orphaned part and every finished batch compacted."""
    if job.index is not None:  # discovery made the cut (pipeline.tables.input_lists)
        shards = plan_shards(job.layout, (), job.settings.shard_size, cut=job.index.shards)
    else:
        shards = plan_shards(job.layout, job.anon_ids.values(), job.settings.shard_size)
    remove_orphans(job.layout, evaluated=job.evaluated)
    compact_finished(job.layout)  # a killed run's finished batches: from here on each shard is one file
    return shards


def drive(
    job: Job,
    planned: Counter,
    *,
    known: Callable[[], pd.DataFrame] | None = None,
    stream: Callable[[], object] | None = None,
    check: Callable[[], None] | None = None,
    label: str = "",
) -> int:
    """Do one planned pass; returns the pairs done.

    `planned`: pairs per shard; `known`: writes the rows known before reading (bad inputs, missing outputs)
    and returns their progress rows; `stream`: builds the Ray Data plan of the rest (called once Ray is up);
    `check`: run once every shard is compacted, before the pass counts as done.
    """
    total = sum(planned.values())
    if total == 0:
        return 0
    if stream is not None:
        ensure_cluster(job)
        job.timings.mark("ray")
    compactor = ShardCompactor(job.layout, planned)
    progress = Progress(total, label or job.stages, stream=job.stream)
    job.progress = progress  # what an interruption kept (pipeline.execution.messages)
    if known is not None:
        rows = known()
        compactor.update(rows)
        progress.update(len(rows), len(rows))
    if stream is not None:
        for batch in stream().iter_batches(batch_format="pandas", batch_size=None):
            job.timings.mark("first_output")
            progress.update(len(batch), int((batch["status"] != "ok").sum()))
            compactor.update(batch)
    compactor.finish()
    if check is not None:
        check()  # every planned pair's rows and image landed (pipeline.tables.landed)
    job.timings.mark("pass_done")
    progress.close()
    job.pairs_done_now += progress.done
    job.errors_now += progress.errors
    job.progress = None
    return progress.done


def evaluate_stage(ds, job: Job, *, actors: int, gpus: float, cpus: float, deepface_home: str | None, read=None):
    """`ds` followed by the evaluation actor pool (pipeline.execution.evaluate_stage), which writes each batch's
    parts; `read` turns a batch of pairs into one with both images' bytes (evaluate: read in the actor)."""
    from ray.data import ActorPoolStrategy

    from pipeline.execution.evaluate_stage import EvaluateConfig, EvaluateStage

    settings = job.settings
    config = EvaluateConfig(
        str(job.layout.root), settings.max_pixels, deepface_home, 1, settings.region, settings.weights_from
    )
    return ds.map_batches(
        EvaluateStage,
        fn_constructor_args=(settings.evaluation, config, read),
        batch_size=settings.eval_batch_size,
        batch_format="pandas",
        compute=ActorPoolStrategy(size=actors),
        # A share of a GPU: Ray makes it the actor's visible device, and deepface's PyTorch recognizers move
        # themselves to it (cuda:0 when one is visible).
        num_gpus=gpus,
        num_cpus=cpus,
    )
