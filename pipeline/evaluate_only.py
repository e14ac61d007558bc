"""`boomerang evaluate`: the evaluation stage on any anonymizer's output.

Pairs are matched through a boomerang output folder's manifest, or, for another tool's folder, by
relative path without the extension (`alice/001.jpg` <-> `alice/001.png`). A `level=X` folder in the
anonymized path gives the level; otherwise the pair is labelled with the first of --levels.
"""

from __future__ import annotations

import re
from dataclasses import replace

import fsspec

from .cluster import disconnect
from .finalize import JobResult, finalize
from .inputs import InputError, discover, read_bytes
from .job import Job, JobFailed, ensure_cluster, prepare, record_failure
from .layout import RunLayout
from .progress import Progress
from .records import MANIFEST_SCHEMA, done_pairs, read_parts, remove_orphans
from .stages import EvaluateConfig, EvaluateStage

_LEVEL = re.compile(r"(?:^|/)level=([0-9.]+)/")


def match_pairs(job: Job, anonymized: str) -> list[dict]:
    """One row per (original, anonymized image, level), in the shape the anonymize stage emits."""
    by_id = {item.image_id: item for item in job.inputs.items}
    theirs = RunLayout.at(anonymized) if "://" not in anonymized else None
    pairs = []
    if theirs is not None and theirs.manifest.is_dir():
        manifest = read_parts(theirs.manifest, MANIFEST_SCHEMA)
        identities = read_parts(theirs.identities).drop_duplicates("anon_id").set_index("anon_id")["image_id"]
        for row in manifest[manifest["status"] == "ok"].itertuples():
            item = by_id.get(identities.get(row.anon_id))
            if item is not None:
                pairs.append(_pair(job, item, str(theirs.root / row.output_path), float(row.level), row.t_boom))
        return pairs
    stems = {_stem(item.image_id): item for item in job.inputs.items}
    for candidate in discover(anonymized).items:
        match = _LEVEL.search(candidate.image_id)
        level = float(match.group(1)) if match else job.settings.levels[0]
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
        row = dict(pair, status="ok", error=None, output_path=pair["anonymized_source"])
        try:
            row["original"] = originals[pair["image_id"]] if parquet else read_bytes(pair["source"])
            row["anonymized"] = read_bytes(pair["anonymized_source"])
            row["source_sha256"] = hashlib.sha256(row["original"]).hexdigest()
            row["sha256_output"] = hashlib.sha256(row["anonymized"]).hexdigest()
        except (OSError, KeyError) as err:
            row.update(status="error", error=str(err), original=None, anonymized=None)
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


def evaluate_folder(settings, *, originals: str, anonymized: str) -> JobResult:
    import ray.data
    from ray.data import ActorPoolStrategy

    job = prepare(replace(settings, input=originals), "evaluate")
    try:
        remove_orphans(job.layout, evaluated=True)
        done = done_pairs(job.layout)
        pairs = [p for p in match_pairs(job, anonymized) if (p["anon_id"], p["level"]) not in done]
        if not pairs and not done:
            raise InputError(f"no anonymized image under {anonymized!r} matches an original in {originals!r}")
        if pairs:
            ensure_cluster(job)
            progress = Progress(len(pairs), "evaluate")
            inputs = job.inputs
            parquet = (inputs.uri, inputs.id_column, inputs.image_column) if inputs.kind == "parquet" else None
            ds = ray.data.from_items(pairs).map_batches(_load, fn_kwargs={"parquet": parquet}, batch_format="pandas")
            ds = ds.map_batches(
                EvaluateStage,
                fn_constructor_args=(
                    settings.evaluation,
                    EvaluateConfig(str(job.layout.root), settings.max_pixels, settings.deepface_home, 1),
                ),
                batch_size=settings.eval_batch_size,
                batch_format="pandas",
                compute=ActorPoolStrategy(size=settings.eval_workers),
                num_cpus=0.5,
            )
            for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
                progress.update(len(batch), int((batch["status"] != "ok").sum()))
            progress.close()
            job.pairs_done_now += progress.done
        return finalize(job)
    except InputError:
        raise
    except Exception as err:  # a failure mid-job: one line, resumable
        raise JobFailed(record_failure(job, err)) from err
    finally:
        disconnect(job.cluster)
