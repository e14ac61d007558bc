"""After the stream: thresholds restated, summary.parquet, the HTML report, run.json's end record, the
closing lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from evaluation import summary_table
from evaluation.summary import (
    image_verdicts,
    merge_partials,
    partial_stats,
    protocol_label,
    summary_from_partials,
    verdict_lines,
    verdict_table,
    with_verdict,
)
from pipeline.folder import storage
from pipeline.folder.provenance import now, read_json, write_json_atomic
from pipeline.outputs.diversity import diversity_section, sample_diversity, with_diversity
from pipeline.outputs.internal_report import (
    MANIFEST_COLUMNS,
    SAMPLE_IMAGES,
    build_report,
    internal_samples,
    report_sample_rows,
)
from pipeline.outputs.linkage_attack import linkage_attack, linkage_section, with_linkage, write_attacks
from pipeline.settings.gate_policy import gate_thresholds
from pipeline.tables.read import ROWS_PER_STEP, shards_with_rows, table_files, table_steps
from pipeline.tables.write import write_public_table

if TYPE_CHECKING:
    from pipeline.execution.job import Job


@dataclass
class ManifestOverview:
    """What finalize needs of the manifest, gathered shard by shard (one shard's rows in memory at a time):
    the counts, the failed rows (the report's failures) and the rows the report samples."""

    counts: dict
    failures: pd.DataFrame  # anon_id, level, error of every failed row
    samples: pd.DataFrame  # the first SAMPLE_IMAGES ok rows by (level, anon_id)

    @classmethod
    def read(cls, layout) -> ManifestOverview:
        totals = {"images": 0, "rows": 0, "ok": 0, "errors": 0}
        levels: set[float] = set()
        failures = [
            pa.table(
                {
                    "anon_id": pa.array([], pa.string()),
                    "level": pa.array([], pa.float64()),
                    "error": pa.array([], pa.string()),
                }
            )
        ]
        samples: pa.Table | None = None
        # Arrow, not pandas: at 10^6 rows pandas' per-step conversions cost more than the counting.
        for (rows,) in table_steps(sorted(shards_with_rows(layout)), [(layout.manifest, MANIFEST_COLUMNS)]):
            ok = pc.equal(rows["status"], "ok")
            n_ok = int(pc.sum(ok).as_py() or 0)
            # Steps split the anon_ids (whole shards): an image's rows are all in one, so images add up.
            totals["images"] += int(pc.count_distinct(rows["anon_id"]).as_py())
            totals["rows"] += len(rows)
            totals["ok"] += n_ok
            totals["errors"] += len(rows) - n_ok
            levels |= {float(v) for v in pc.unique(rows["level"]).to_pylist() if v is not None and v == v}
            failures.append(rows.filter(pc.invert(ok)).select(["anon_id", "level", "error"]))
            shown = rows.filter(pc.and_(ok, pc.is_valid(rows["output_path"])))
            if samples is not None:
                shown = pa.concat_tables([samples, shown])
            samples = shown.sort_by([("level", "ascending"), ("anon_id", "ascending")]).slice(0, SAMPLE_IMAGES)
        counts = {"images": totals.pop("images"), "levels": sorted(levels), **totals}
        failed = pa.concat_tables(failures, promote_options="default").to_pandas()
        chosen = samples.to_pandas() if samples is not None else pd.DataFrame(columns=MANIFEST_COLUMNS)
        return cls(counts, failed, chosen)


@dataclass
class JobResult:
    job: Job
    overview: ManifestOverview
    summary: pd.DataFrame | None
    report: str | None
    extra: dict = field(default_factory=dict)
    # The verdict at the gate's thresholds, one line per level (one for a gate run): the first thing said.
    verdict: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict:
        return self.overview.counts

    @property
    def failed_rows(self) -> int:
        return self.overview.counts["errors"]


def finalize(
    job: Job, sections=(), extra: dict | None = None, released: set | None = None, released_rows=None
) -> JobResult:
    """Rebuild the summary and report from the Parquet files (so they always agree with them).

    `released` (gate runs): the (anon_id, level) pairs in release/, for the captions of the internal report;
    `released_rows`: their manifest rows, the internal report's pictures (withheld ones only with
    --report-withheld).
    """
    layout = job.layout
    overview = ManifestOverview.read(layout)
    summary = None
    report = None
    verdict: list[str] = []
    if job.evaluated or any(layout.distances.glob("part-*.parquet")):
        gate = gate_thresholds(job.settings)
        partials, distances, verdicts = restate_thresholds(layout.distances, job.settings.evaluation, gate)
        summary = summary_from_partials(partials, job.settings.evaluation, job.settings.label)
        attacks = linkage_attack(layout)
        if len(attacks):
            write_attacks(layout, attacks)  # per row: private; the summary holds the aggregates
            summary = with_linkage(summary, attacks)
            sections = [*sections, *filter(None, [linkage_section(summary)])]
        summary = with_diversity(summary, sample_diversity(layout))
        sections = [*sections, *filter(None, [diversity_section(summary)])]
        table = verdict_table(verdicts)
        summary = with_verdict(summary, table, gate)  # the verdict travels with the numbers (summary.parquet)
        write_public_table(summary_table(summary), layout.summary)
        counted = (extra or {}).get("gate")
        counted = (counted["released"], counted["released"] + counted["withheld"]) if counted else None
        verdict = verdict_lines(table, gate, summary, counted)
        samples = internal_samples(job, report_sample_rows(job, overview.samples, released_rows), released)
        heading = "Sample anonymized images (thumbnails)"
        if released is not None:
            heading = (
                "Sample outputs, released and withheld (thumbnails, --report-withheld)"
                if job.settings.report_withheld
                else "Sample released outputs (thumbnails; withheld ones only with --report-withheld)"
            )
        report = str(
            build_report(
                job,
                overview.failures,
                summary,
                distances,
                samples,
                sections,
                verdict=verdict,
                gate=gate,
                samples_heading=heading,
            )
        )
    record = read_json(layout.run_json)
    job.timings.mark("finished")
    record.update(
        {
            "timings": dict(job.timings),
            "finished": now(),
            "status": "finished",
            "counts": overview.counts,
            "pairs_done_this_run": job.pairs_done_now,
            **(extra or {}),
        }
    )
    write_json_atomic(layout.run_json, record)
    return JobResult(job, overview, summary, report, extra or {}, verdict)


def restate_thresholds(
    folder: Path, settings, gate: dict[str, float] | None = None
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Every distance file with the run's current thresholds; returns the summary's partial statistics,
    the error rows (the report's failures) and, per (anon_id, level), whether the image clears every recognizer
    at the `gate` thresholds (the verdict; empty without `gate`), shard by shard: no more than one shard's rows
    at a time.

    A rerun may change --threshold: distances are kept, and `threshold` and `cleared` in
    distances.parquet follow the new values, so the tables, the summary, the report and the gate agree.
    Files written under other thresholds are rewritten.
    """
    from evaluation import DISTANCES_SCHEMA

    partials: list[dict] = []
    errors = [DISTANCES_SCHEMA.empty_table().select([*_SUMMARY_READS, "error"]).to_pandas()]
    pending: list[pa.Table] = []
    verdicts = [pd.DataFrame(columns=["anon_id", "level", "clears"])]
    rows = 0

    def add(frame: pd.DataFrame) -> None:
        partials.append(partial_stats(frame, settings))
        if gate:
            verdicts.append(image_verdicts(frame, gate))

    for part in table_files(folder):
        file = storage.parquet_file(part)
        # Files from before a column existed (compared_at) lack it: read what there is.
        columns = [c for c in (*_SUMMARY_READS, "error") if c in file.schema_arrow.names]
        table = _restated(part, file.read(columns=columns), settings)
        failed = table.filter(pc.equal(table["status"], "error"))
        if len(failed):
            errors.append(failed.to_pandas())
        pending.append(table.select([c for c in _SUMMARY_READS if c in table.schema.names]))
        rows += len(table)
        if rows >= ROWS_PER_STEP:  # several files at once: pandas' per-call cost is per step, not per shard
            add(_concat(pending))
            pending, rows = [], 0
    if pending:
        add(_concat(pending))
    found = [v for v in verdicts if len(v)] or verdicts[:1]
    return _merge_pairwise(partials), pd.concat(errors, ignore_index=True), pd.concat(found, ignore_index=True)


# What the summary reads of each distance row (anon_id and error only for failed rows, the report's failures).
_SUMMARY_READS = (
    "anon_id",
    "level",
    "face",
    "recognizer",
    "distance",
    "threshold",
    "cleared",
    "status",
    "face_anonymized",
    "compared_at",
)


def _restated(part: Path, table: pa.Table, settings) -> pa.Table:
    """`table` (some columns of the file `part`) with threshold and cleared as the run's thresholds say;
    the file is rewritten, whole, only where they differ."""
    names = pc.unique(table["recognizer"]).to_pylist()
    # One lookup per recognizer name, not per row (2 * 10^6 calls at 10^6 images).
    thresholds = pa.array([settings.threshold_for(name) for name in names], pa.float64())
    wanted = _array(pc.take(thresholds, pc.index_in(table["recognizer"], value_set=pa.array(names, pa.string()))))
    ok = pc.equal(table["status"], "ok")
    cleared = _array(pc.if_else(ok, pc.greater(table["distance"], wanted), pa.scalar(None, pa.bool_())))
    if _array(table["threshold"]).equals(wanted) and _array(table["cleared"]).equals(cleared):
        return table
    whole = storage.read_table(part)
    write_public_table(_replaced(whole, threshold=wanted, cleared=cleared), part)
    return _replaced(table, threshold=wanted, cleared=cleared)


def _concat(tables: list[pa.Table]) -> pd.DataFrame:
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def _array(values) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _replaced(table: pa.Table, **columns: pa.Array) -> pa.Table:
    for name, values in columns.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), values)
    return table


def _merge_pairwise(partials: list[dict]) -> dict:
    """Merge in a balanced tree: each merge copies its distances (kept for the exact median), so merging
    shard after shard into one would copy them once per shard."""
    while len(partials) > 1:
        partials = [merge_partials(*partials[i : i + 2]) for i in range(0, len(partials), 2)]
    return partials[0] if partials else {}


def closing_lines(result: JobResult) -> list[str]:
    """A few short lines for the terminal: the verdict at the top level first, then outputs, failures by reason,
    the paper's protocol at the top level, where."""
    job = result.job
    c = result.counts
    levels = ", ".join(f"{v:g}" for v in c["levels"])
    where = f"at level(s) {levels}" if levels else f"({job.settings.label or 'no level'})"
    k = job.settings.samples
    images = f"{c['images'] // k} images x {k} samples" if k > 1 and c["images"] % k == 0 else f"{c['images']} images"
    lines = result.verdict[-1:] + [
        f"{images} {where}: {c['ok']} outputs ok, {c['errors']} failed ({job.pairs_done_now} processed in this run)."
    ]
    if c["errors"]:
        reasons = result.overview.failures["error"].fillna("error").str.split(":").str[0]
        counts = reasons.value_counts()
        top = ", ".join(f"{reason} {n}" for reason, n in counts.head(3).items())
        if len(counts) > 3:  # every failure counted: the rest in one
            top += f", {len(counts) - 3} other reasons {int(counts.iloc[3:].sum())}"
        lines.append(f"Failed: {top}. Details: {job.layout.root / 'manifest.parquet'}")
    summary = result.summary
    if summary is not None and len(summary) and summary["level"].notna().any():
        top_level = summary["level"].max()
        at = summary[summary["level"] == top_level]
        parts = [_cleared(r) for r in at.itertuples()]
        protocol = protocol_label(summary)
        lines.append(f"At level {top_level:g}, {protocol}: " + ", ".join(parts) + " cleared (distance > threshold).")
    elif summary is not None and len(summary):
        parts = [_cleared(r) for r in summary.itertuples()]
        label = protocol_label(summary)
        lines.append(f"{label[0].upper()}{label[1:]}: " + ", ".join(parts) + " cleared (distance > threshold).")
    if result.report:
        lines.append(f"Report: {result.report}")
    if job.notice:
        lines.append("NOTE: these images and numbers are not meaningful (random-weight models that boomerang made).")
    train = result.extra.get("train")
    if train:
        lines.append(f"Training set: {job.layout.train} ({train['images']} images in {train['classes']} classes).")
    enhanced = result.extra.get("enhanced")
    if enhanced:
        n = enhanced["images"]
        lines.append(f"Enhanced images: {job.layout.enhanced} ({n} image{'s' * (n != 1)}, named as in the input).")
    gate = result.extra.get("gate")
    if gate:
        reasons = ", ".join(f"{reason} {n}" for reason, n in gate["withheld_reasons"].items())
        lines.append(f"released {gate['released']}, withheld {gate['withheld']}" + (f" ({reasons})" if reasons else ""))
    return lines


def _cleared(row) -> str:
    """`Facenet 75% (6/8 images; not counted: 2 with no face in the original)`: what the count counts (faces in
    face-region mode), and what it leaves out."""
    # A missing output (another tool skipped the image) counts as not cleared.
    trials = row.n_evaluated + row.n_missing_output
    fraction = "-" if pd.isna(row.fraction_cleared) else f"{row.fraction_cleared:.0%}"
    unit = "faces" if pd.notna(getattr(row, "n_faces", None)) else "images"
    left = [f"{row.n_no_face_original} with no face in the original"] if row.n_no_face_original else []
    left += [f"{row.n_errors} failed"] if row.n_errors else []
    rest = f"; not counted: {', '.join(left)}" if left else ""
    return f"{row.recognizer} {fraction} ({row.n_cleared}/{trials} {unit}{rest})"
