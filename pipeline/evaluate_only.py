"""`boomerang evaluate`: the evaluation stage on any anonymizer's output.

Pairs are matched through a boomerang output folder's manifest, or, for another tool's folder, by
relative path without the extension (`alice/001.jpg` <-> `alice/001.png`). A `level=X` folder in the
anonymized path gives the level; otherwise the results have no level (null), and `--label NAME` names
them in the summary and report. An original with no anonymized counterpart is a `missing_output` row,
counted as not cleared: a tool that skips hard images must not look better for it. Where each anonymized
image was read is kept in private/outputs.parquet (`output_source`) only: the manifest's `output_path` names
files of this run folder, and these are not.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter

import fsspec
import pandas as pd

from . import storage
from .errors import MISSING_OUTPUT, classify, error_row
from .finalize import JobResult, finalize
from .inputs import InputError, discover, read_bytes
from .job import Job, ensure_cluster
from .layout import RunLayout
from .plan import plan_evaluation
from .progress import Progress
from .records import compact_finished, finish_batch, forget_pairs, read_manifest, remove_orphans
from .resume import ShardCompactor, done_by_shard, pairs_to_retry
from .shards import plan_shards

_LEVEL = re.compile(r"(?:^|/)level=([0-9.]+)/")


def match_pairs(job: Job, anonymized: str) -> list[dict]:
    """One row per (original, anonymized image, level), in the shape the anonymize stage emits."""
    by_id = {item.image_id: item for item in job.inputs.items}
    theirs = RunLayout.at(anonymized) if "://" not in anonymized else None
    pairs = []
    if theirs is not None and theirs.manifest.is_dir():
        manifest = read_manifest(theirs)
        identities = storage.read_table(theirs.identities).to_pandas().set_index("anon_id")["image_id"]
        for row in manifest[manifest["status"] == "ok"].itertuples():
            item = by_id.get(identities.get(row.anon_id))
            if item is not None:
                pairs.append(_pair(job, item, str(theirs.root / row.output_path), float(row.level), row.t_boom))
        return pairs
    stems = {_stem(item.image_id): item for item in job.inputs.items}
    for candidate in discover(anonymized).items:
        match = _LEVEL.search(candidate.image_id)
        level = float(match.group(1)) if match else math.nan
        rel = _LEVEL.sub("", candidate.image_id) if match else candidate.image_id
        item = stems.get(_stem(rel))
        if item is not None:
            pairs.append(_pair(job, item, candidate.source, level, None))
    return pairs


def _stem(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


def _pair(job: Job, item, anonymized_source: str, level: float, t_boom) -> dict:
    return {
        "image_id": item.image_id,
        "anon_id": job.anon_ids[item.image_id],
        "source": item.source,
        "anonymized_source": anonymized_source,
        "level": level,
        "t_boom": t_boom,
    }


def _load(batch, parquet: tuple[str, str, str] | None = None):
    """Read both images of each pair; unreadable ones become error rows for the evaluate stage.

    `parquet` = (uri, id column, image column) when the originals are rows of a Parquet dataset.
    """
    import hashlib

    import pandas as pd

    pairs = batch.to_dict("records")
    originals = _parquet_images(parquet, [p["image_id"] for p in pairs]) if parquet else {}
    rows = []
    for pair in pairs:
        # The other tool's path names its files (for LFW, the person): private/outputs.parquet keeps it; the
        # public manifest has no output of this run to point at.
        row = dict(pair, status="ok", error=None, output_path=None, output_source=pair["anonymized_source"])
        try:
            row["original"] = originals[pair["image_id"]] if parquet else read_bytes(pair["source"])
            row["anonymized"] = read_bytes(pair["anonymized_source"])
            row["source_sha256"] = hashlib.sha256(row["original"]).hexdigest()
            row["sha256_output"] = hashlib.sha256(row["anonymized"]).hexdigest()
        except (OSError, KeyError) as err:
            row.update(error_row({}, pair["level"], classify(err if isinstance(err, OSError) else OSError(err))))
            row.update(original=None, anonymized=None)
        rows.append(row)
    return pd.DataFrame(rows)


def _parquet_images(parquet: tuple[str, str, str], ids: list[str]) -> dict[str, bytes]:
    """The image bytes of these ids, read with a filtered scan of the Parquet dataset."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    uri, id_column, image_column = parquet
    fs, root = fsspec.core.url_to_fs(uri)
    dataset = pads.dataset(root, filesystem=fs, format="parquet")
    table = dataset.to_table(columns=[id_column, image_column], filter=pc.field(id_column).cast(pa.string()).isin(ids))
    return {str(k): v for k, v in zip(table[id_column].to_pylist(), table[image_column].to_pylist(), strict=True)}


def _key(anon_id: str, level) -> tuple[str, float]:
    # No level (another tool's output) is NaN in the tables; as a key it must equal itself.
    return anon_id, -1.0 if level is None or pd.isna(level) else float(level)


def missing_outputs(job: Job, pairs: list[dict]) -> list[dict]:
    """Error rows for originals that have no anonymized counterpart, at every level the output has."""
    levels = sorted({_key("", p["level"])[1] for p in pairs}) or [-1.0]
    matched = {_key(p["anon_id"], p["level"]) for p in pairs}
    rows = []
    for item in job.inputs.items:
        aid = job.anon_ids[item.image_id]
        for level in levels:
            if (aid, level) not in matched:
                rows.append(error_row({"anon_id": aid}, math.nan if level < 0 else level, MISSING_OUTPUT))
    return rows


def evaluate_pass(job: Job, anonymized: str) -> JobResult:
    """Evaluate every (original, anonymized) pair not yet done, record missing outputs, finalize."""
    import ray.data
    from ray.data import ActorPoolStrategy

    from .stages import EvaluateConfig, EvaluateStage

    settings = job.settings
    shards = plan_shards(job.layout, job.anon_ids.values(), settings.shard_size)
    remove_orphans(job.layout, evaluated=True)
    compact_finished(job.layout)
    done, retry = set(), set()
    for shard, rows in done_by_shard(job.layout, range(shards.count), evaluated=True):
        # Transient errors (a read that failed, out of memory) are redone, and every error with --retry-errors.
        again = {
            _key(a, lv) for a, lv in pairs_to_retry(job.layout, shard, rows, {}, settings.retry_errors, evaluated=True)
        }
        retry |= again
        done |= {_key(a, level) for a, level in zip(rows["anon_id"], rows["level"], strict=True)} - again
    forget_pairs(job.layout, retry)
    matched = match_pairs(job, anonymized)
    if not matched and not done:
        raise InputError(f"no anonymized image under {anonymized!r} matches an original in {settings.input!r}")
    pairs = [p for p in matched if _key(p["anon_id"], p["level"]) not in done]
    missing = [r for r in missing_outputs(job, matched) if _key(r["anon_id"], r["level"]) not in done]
    planned = Counter(shards.of(p["anon_id"]) for p in [*pairs, *missing])
    compactor = ShardCompactor(job.layout, planned)
    if missing:
        from evaluation import error_rows

        distance_rows = [
            d for r in missing for d in error_rows(r["anon_id"], r["level"], None, r["error"], settings.evaluation)
        ]
        compactor.update(finish_batch(job.layout, missing, [dict(d, status="missing_output") for d in distance_rows]))
        job.pairs_done_now += len(missing)
    if pairs:
        ensure_cluster(job)
        plan = plan_evaluation(
            job.cluster.cpus,
            job.cluster.gpus,
            eval_workers=settings.eval_workers,
            eval_gpus_per_worker=settings.eval_gpus_per_worker,
        )
        progress = Progress(len(pairs), "evaluate")
        inputs = job.inputs
        parquet = (inputs.uri, inputs.id_column, inputs.image_column) if inputs.kind == "parquet" else None
        config = EvaluateConfig(
            str(job.layout.root), settings.max_pixels, settings.deepface_home, 1, settings.region, settings.weights_from
        )
        # The actors read the images themselves: a separate read task would move every image's bytes
        # between processes once more, which costs as much as the embeddings of small images.
        ds = ray.data.from_items(pairs).map_batches(
            EvaluateStage,
            fn_constructor_args=(settings.evaluation, config, functools.partial(_load, parquet=parquet)),
            batch_size=settings.eval_batch_size,
            batch_format="pandas",
            # The actors reserve at most half the CPUs in Ray's accounting (pipeline.plan).
            compute=ActorPoolStrategy(size=plan.evaluate),
            num_gpus=plan.gpus_per_evaluate,
            num_cpus=plan.cpus_per_actor,
        )
        for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
            progress.update(len(batch), int((batch["status"] != "ok").sum()))
            compactor.update(batch)
        progress.close()
        job.pairs_done_now += progress.done
    compactor.finish()
    return finalize(job)
