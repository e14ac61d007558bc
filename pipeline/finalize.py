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
from .records import read_manifest

if TYPE_CHECKING:
    from .job import Job

SAMPLE_IMAGES = 12
# What finalize, the report and the closing lines read of the manifest (not hashes, timings, step counts).
MANIFEST_COLUMNS = ["anon_id", "level", "t_boom", "status", "error", "output_path"]


@dataclass
class JobResult:
    job: Job
    manifest: pd.DataFrame
    summary: pd.DataFrame | None
    report: str | None
    extra: dict = field(default_factory=dict)

    @property
    def failed_rows(self) -> int:
        return int((self.manifest["status"] != "ok").sum())


def finalize(job: Job, sections=(), extra: dict | None = None, released: set | None = None) -> JobResult:
    """Rebuild the summary and report from the Parquet files (so they always agree with them).

    `released` (gate runs): the (anon_id, level) pairs in release/, for the captions of the internal report.
    """
    layout = job.layout
    manifest = read_manifest(layout, MANIFEST_COLUMNS)
    summary = None
    report = None
    if job.evaluated or any(layout.distances.glob("part-*.parquet")):
        partials, distances = restate_thresholds(layout.distances, job.settings.evaluation)
        summary = summary_from_partials(partials, job.settings.evaluation, job.settings.label)
        write_parquet_atomic(summary_table(summary), layout.summary)
        samples = internal_samples(job, manifest, released)
        report = str(build_report(job, manifest, summary, distances, samples, sections))
    record = read_json(layout.run_json)
    record.update(
        {
            "finished": now(),
            "status": "finished",
            "counts": counts(manifest),
            "pairs_done_this_run": job.pairs_done_now,
            **(extra or {}),
        }
    )
    write_json_atomic(layout.run_json, record)
    return JobResult(job, manifest, summary, report, extra or {})


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
        table = pq.read_table(part)
        frame = table.to_pandas()
        wanted = frame["recognizer"].map(settings.threshold_for).astype(float)
        ok = frame["status"] == "ok"
        cleared = pd.Series(pd.NA, index=frame.index, dtype="boolean")
        cleared[ok] = frame.loc[ok, "distance"].astype(float) > wanted[ok]
        if not (frame["threshold"].astype(float).equals(wanted) and frame["cleared"].astype("boolean").equals(cleared)):
            frame["threshold"] = wanted
            frame["cleared"] = cleared
            write_parquet_atomic(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), part)
        partials.append(partial_stats(frame, settings))
        errors.append(frame[frame["status"] == "error"])
    return _merge_pairwise(partials), pd.concat(errors, ignore_index=True)


def _merge_pairwise(partials: list[dict]) -> dict:
    """Merge in a balanced tree: each merge copies its distances (kept for the exact median), so merging
    shard after shard into one would copy them once per shard."""
    while len(partials) > 1:
        partials = [merge_partials(*partials[i : i + 2]) for i in range(0, len(partials), 2)]
    return partials[0] if partials else {}


def counts(manifest: pd.DataFrame) -> dict:
    return {
        "images": int(manifest["anon_id"].nunique()),
        "levels": sorted(float(v) for v in manifest["level"].dropna().unique()),
        "rows": int(len(manifest)),
        "ok": int((manifest["status"] == "ok").sum()),
        "errors": int((manifest["status"] != "ok").sum()),
    }


def internal_samples(job: Job, manifest: pd.DataFrame, released: set | None = None) -> list[tuple[str, bytes]]:
    """(caption, PNG) for the internal report: any outputs, captioned released / withheld in gate runs.

    Originals only with --report-originals, re-encoded so no metadata travels.
    """
    ok = manifest[(manifest["status"] == "ok") & manifest["output_path"].notna()].sort_values(["level", "anon_id"])
    chosen = ok.head(SAMPLE_IMAGES)
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


def build_report(job: Job, manifest, summary, distances, samples, sections=(), report_dir=None):
    """Write the HTML report (to report/ unless `report_dir`) with exactly the given sample images."""
    layout = job.layout
    failed = manifest["status"] != "ok"
    failures = pd.concat(
        [
            manifest.loc[failed, ["anon_id", "level", "error"]].assign(stage="anonymize"),
            distances.loc[distances["status"] == "error", ["anon_id", "level", "error", "recognizer"]]
            .assign(stage="evaluate")
            .loc[lambda d: ~d["anon_id"].isin(manifest.loc[failed, "anon_id"])],
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
    c = counts(result.manifest)
    levels = ", ".join(f"{v:g}" for v in c["levels"])
    where = f"at level(s) {levels}" if levels else f"({job.settings.label or 'no level'})"
    lines = [
        f"{c['images']} images {where}: {c['ok']} outputs ok, {c['errors']} failed "
        f"({job.pairs_done_now} processed in this run)."
    ]
    if c["errors"]:
        reasons = result.manifest.loc[result.manifest["status"] != "ok", "error"].fillna("error").str.split(":").str[0]
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
