"""After the stream: thresholds restated, summary.parquet, the HTML report, run.json's end record, the
closing lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from evaluation import summary_table, write_parquet_atomic, write_report
from evaluation.summary import merge_partials, partial_stats, summary_from_partials

from .provenance import now, read_json, write_json_atomic
from .records import read_shard, shards_with_rows

if TYPE_CHECKING:
    from .job import Job

SAMPLE_IMAGES = 12
# What finalize, the report and the closing lines read of the manifest (not hashes, timings, step counts).
MANIFEST_COLUMNS = ["anon_id", "level", "t_boom", "status", "error", "output_path"]


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
        failures = [pd.DataFrame(columns=["anon_id", "level", "error"])]
        samples = pd.DataFrame(columns=MANIFEST_COLUMNS)
        for shard in sorted(shards_with_rows(layout)):
            rows = read_shard(layout.manifest, shard, MANIFEST_COLUMNS)
            ok = rows["status"] == "ok"
            # Shards split the anon_ids: an image's rows are all in one shard, so images add up.
            totals["images"] += int(rows["anon_id"].nunique())
            totals["rows"] += len(rows)
            totals["ok"] += int(ok.sum())
            totals["errors"] += int((~ok).sum())
            levels |= {float(v) for v in rows["level"].dropna().unique()}
            failures.append(rows.loc[~ok, ["anon_id", "level", "error"]])
            shown = rows[ok & rows["output_path"].notna()]
            samples = pd.concat([samples, shown]) if len(samples) else shown
            samples = samples.sort_values(["level", "anon_id"]).head(SAMPLE_IMAGES)
        counts = {"images": totals.pop("images"), "levels": sorted(levels), **totals}
        return cls(counts, pd.concat(failures, ignore_index=True), samples)


@dataclass
class JobResult:
    job: Job
    overview: ManifestOverview
    summary: pd.DataFrame | None
    report: str | None
    extra: dict = field(default_factory=dict)

    @property
    def counts(self) -> dict:
        return self.overview.counts

    @property
    def failed_rows(self) -> int:
        return self.overview.counts["errors"]


def finalize(job: Job, sections=(), extra: dict | None = None, released: set | None = None) -> JobResult:
    """Rebuild the summary and report from the Parquet files (so they always agree with them).

    `released` (gate runs): the (anon_id, level) pairs in release/, for the captions of the internal report.
    """
    layout = job.layout
    overview = ManifestOverview.read(layout)
    summary = None
    report = None
    if job.evaluated or any(layout.distances.glob("part-*.parquet")):
        partials, distances = restate_thresholds(layout.distances, job.settings.evaluation)
        summary = summary_from_partials(partials, job.settings.evaluation, job.settings.label)
        write_parquet_atomic(summary_table(summary), layout.summary)
        samples = internal_samples(job, overview.samples, released)
        report = str(build_report(job, overview.failures, summary, distances, samples, sections))
    record = read_json(layout.run_json)
    record.update(
        {
            "finished": now(),
            "status": "finished",
            "counts": overview.counts,
            "pairs_done_this_run": job.pairs_done_now,
            **(extra or {}),
        }
    )
    write_json_atomic(layout.run_json, record)
    return JobResult(job, overview, summary, report, extra or {})


def restate_thresholds(folder: Path, settings) -> tuple[dict, pd.DataFrame]:
    """Every distance file with the run's current thresholds; returns the summary's partial statistics
    and the error rows (the report's failures), shard by shard: no more than one shard's rows at a time.

    A rerun may change --threshold: distances are kept, and `threshold` and `cleared` in
    distances.parquet follow the new values, so the tables, the summary, the report and the gate agree.
    Files written under other thresholds are rewritten.
    """
    from evaluation import DISTANCES_SCHEMA

    partials: list[dict] = []
    errors = [DISTANCES_SCHEMA.empty_table().to_pandas()]
    for part in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(part, columns=[c for c in DISTANCES_SCHEMA.names if c in _SUMMARY_READS])
        frame = table.to_pandas()
        # One lookup per recognizer name, not per row (2 * 10^6 calls at 10^6 images).
        thresholds = {name: settings.threshold_for(name) for name in frame["recognizer"].unique()}
        wanted = frame["recognizer"].map(thresholds).astype(float)
        ok = frame["status"] == "ok"
        cleared = pd.Series(pd.NA, index=frame.index, dtype="boolean")
        cleared[ok] = frame.loc[ok, "distance"].astype(float) > wanted[ok]
        if not (frame["threshold"].astype(float).equals(wanted) and frame["cleared"].astype("boolean").equals(cleared)):
            _rewrite_thresholds(part, wanted, cleared)
            frame["threshold"], frame["cleared"] = wanted, cleared
        partials.append(partial_stats(frame, settings))
        failed = frame["status"] == "error"
        if failed.any():
            rows = pq.read_table(part, columns=["anon_id", "error"]).to_pandas()[failed.to_numpy()]
            errors.append(frame[failed].assign(anon_id=rows["anon_id"].to_numpy(), error=rows["error"].to_numpy()))
    return _merge_pairwise(partials), pd.concat(errors, ignore_index=True)


# What the summary reads of each distance row (anon_id and error only for failed rows, the report's failures).
_SUMMARY_READS = ("level", "recognizer", "distance", "threshold", "cleared", "status", "face_anonymized", "compared_at")


def _rewrite_thresholds(part: Path, wanted: pd.Series, cleared: pd.Series) -> None:
    table = pq.read_table(part)
    frame = table.to_pandas()
    frame["threshold"], frame["cleared"] = wanted.to_numpy(), cleared.to_numpy()
    write_parquet_atomic(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), part)


def _merge_pairwise(partials: list[dict]) -> dict:
    """Merge in a balanced tree: each merge copies its distances (kept for the exact median), so merging
    shard after shard into one would copy them once per shard."""
    while len(partials) > 1:
        partials = [merge_partials(*partials[i : i + 2]) for i in range(0, len(partials), 2)]
    return partials[0] if partials else {}


def internal_samples(job: Job, chosen: pd.DataFrame, released: set | None = None) -> list[tuple[str, bytes]]:
    """(caption, PNG) for the internal report of these ok rows, captioned released / withheld in gate runs.

    Originals only with --report-originals, re-encoded so no metadata travels.
    """
    originals = _original_thumbnails(job, chosen) if job.settings.report_originals else {}
    samples = []
    for row in chosen.itertuples():
        path = job.layout.root / row.output_path
        if row.anon_id in originals:
            samples.append((f"{row.anon_id[:8]} ORIGINAL", originals.pop(row.anon_id)))
        if not path.exists():
            continue
        caption = f"{row.anon_id[:8]} {_level_text(row.level, row.t_boom)}"
        if released is not None:
            caption += " released" if (row.anon_id, float(row.level)) in released else " withheld"
        samples.append((caption, path.read_bytes()))
    return samples


def _level_text(level, t_boom) -> str:
    if pd.isna(level):
        return ""
    return f"level {level:.2f}" + ("" if pd.isna(t_boom) else f" (t_boom {int(t_boom)})")


def build_report(job: Job, failed, summary, distances, samples, sections=(), report_dir=None):
    """Write the HTML report (to report/ unless `report_dir`) with exactly the given sample images.

    `failed`: the manifest's failed rows (anon_id, level, error); `distances`: the evaluation's error rows.
    """
    layout = job.layout
    failures = pd.concat(
        [
            failed[["anon_id", "level", "error"]].assign(stage="anonymize"),
            distances.loc[distances["status"] == "error", ["anon_id", "level", "error", "recognizer"]]
            .assign(stage="evaluate")
            .loc[lambda d: ~d["anon_id"].isin(failed["anon_id"])],
        ],
        ignore_index=True,
    )
    record = read_json(layout.run_json)
    return write_report(
        report_dir or layout.report,
        title="Boomerang anonymization report",
        settings=job.settings.public_dict(),
        versions={
            **record.get("versions", {}),
            **{f"model {k}": v for k, v in (record.get("model") or {}).items()},
        },
        summary=summary,
        failures=failures,
        samples=samples,
        notice=job.notice,
        sections=list(sections),
    )


def _original_thumbnails(job: Job, rows: pd.DataFrame) -> dict[str, bytes]:
    from anonymize import ImageError, decode_image, encode_png

    from .inputs import read_bytes

    identities = pd.read_parquet(job.layout.identities).set_index("anon_id")
    thumbs = {}
    for anon_id in rows["anon_id"].unique():
        source = identities["source"].get(anon_id)
        if not source:  # Parquet inputs: the bytes are not at a path
            continue
        try:
            image = decode_image(read_bytes(source), max_pixels=job.settings.max_pixels)
        except (ImageError, OSError):
            continue
        image.thumbnail((256, 256))
        thumbs[anon_id] = encode_png(image)
    return thumbs


def closing_lines(result: JobResult) -> list[str]:
    """A few short lines for the terminal: outputs, failures by reason, cleared at the top level, where."""
    job = result.job
    c = result.counts
    levels = ", ".join(f"{v:g}" for v in c["levels"])
    where = f"at level(s) {levels}" if levels else f"({job.settings.label or 'no level'})"
    lines = [
        f"{c['images']} images {where}: {c['ok']} outputs ok, {c['errors']} failed "
        f"({job.pairs_done_now} processed in this run)."
    ]
    if c["errors"]:
        reasons = result.overview.failures["error"].fillna("error").str.split(":").str[0]
        top = ", ".join(f"{reason} {n}" for reason, n in reasons.value_counts().head(3).items())
        lines.append(f"Failed: {top}. Details: {job.layout.root / 'manifest.parquet'}")
    summary = result.summary
    if summary is not None and len(summary) and summary["level"].notna().any():
        top_level = summary["level"].max()
        at = summary[summary["level"] == top_level]
        parts = [_cleared(r) for r in at.itertuples()]
        lines.append(f"At level {top_level:g}: " + ", ".join(parts) + " cleared (distance > threshold).")
    elif summary is not None and len(summary):
        parts = [_cleared(r) for r in summary.itertuples()]
        lines.append(", ".join(parts) + " cleared (distance > threshold).")
    if result.report:
        lines.append(f"Report: {result.report}")
    if job.notice:
        lines.append("NOTE: these images and numbers are not meaningful (random-weight models that boomerang made).")
    gate = result.extra.get("gate")
    if gate:
        reasons = ", ".join(f"{reason} {n}" for reason, n in gate["withheld_reasons"].items())
        lines.append(f"released {gate['released']}, withheld {gate['withheld']}" + (f" ({reasons})" if reasons else ""))
    return lines


def _cleared(row) -> str:
    # A missing output (another tool skipped the image) counts as not cleared.
    trials = row.n_evaluated + row.n_missing_output
    fraction = "-" if pd.isna(row.fraction_cleared) else f"{row.fraction_cleared:.0%}"
    return f"{row.recognizer} {fraction} ({row.n_cleared}/{trials})"
