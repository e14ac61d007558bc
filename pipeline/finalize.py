"""After the stream: thresholds restated, summary.parquet, the HTML report, run.json's end record, the
closing lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from evaluation import render_report, summary_table
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

from . import storage
from .attacks import linkage_attack, linkage_section, with_linkage, write_attacks
from .config import override_statement, public_model
from .diversity import diversity_section, sample_diversity, with_diversity
from .layout import write_public_table
from .provenance import now, read_json, write_json_atomic
from .records import ROWS_PER_STEP, shards_with_rows, table_files, table_steps
from .report_document import document_rows, input_digest, report_settings, run_secret, thumbnail

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
        from .gate import gate_thresholds  # here: gate imports this module

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


def report_sample_rows(job: Job, chosen: pd.DataFrame, released_rows: pd.DataFrame | None) -> pd.DataFrame:
    """The rows the internal report pictures: in a gate run the released outputs (and the sampled withheld ones
    too with --report-withheld, the riskiest pictures of the run); elsewhere the sampled outputs."""
    if released_rows is None:
        return chosen
    shown = released_rows[[c for c in MANIFEST_COLUMNS if c in released_rows]]
    if job.settings.report_withheld:
        shown = pd.concat([shown, chosen], ignore_index=True).drop_duplicates(["anon_id", "level"])
    return shown.sort_values(["level", "anon_id"]).head(SAMPLE_IMAGES)


def internal_samples(job: Job, chosen: pd.DataFrame, released: set | None = None) -> list[tuple[str, bytes]]:
    """(caption, PNG thumbnail) for the internal report of these ok rows, captioned released / withheld in gate
    runs; never an output at full resolution (report_document.thumbnail).

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
        # No face boxes drawn: they locate people and stay in private/outputs.parquet (docs/privacy.md).
        samples.append((caption, thumbnail(path.read_bytes())))
    return samples


def _level_text(level, t_boom) -> str:
    if pd.isna(level):
        return ""
    return f"level {level:.2f}" + ("" if pd.isna(t_boom) else f" (t_boom {int(t_boom)})")


def build_report(
    job: Job,
    failed,
    summary,
    distances,
    samples,
    sections=(),
    report_dir=None,
    verdict=(),
    gate=None,
    samples_heading="Sample anonymized images",
    covers: tuple[str, list[str]] | None = None,
):
    """Write the HTML report (to report/ unless `report_dir`) with exactly the given sample images.

    `verdict`: the lines that open the Summary; `gate`: the gate's thresholds, drawn in the distance plot.
    `covers`: (what, anon_ids) the report describes, fingerprinted in its document rows (default: the input).

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
    model = dict(record.get("model") or {})
    if "model" in model:  # also a run.json from before public_model: never a local path in the report
        model["model"] = public_model(str(model["model"]), model.get("weights_sha256"))
    # A gate-policy override is the first thing either report says, before any other notice.
    notice = " ".join(filter(None, [override_statement(job.settings), job.notice])) or None
    what, ids = covers or ("input", _input_ids(job))
    files = render_report(
        title="Boomerang anonymization report",
        document=document_rows(record, len(ids), input_digest(run_secret(job), ids), what),
        samples_heading=samples_heading,
        # The command that made the folder (`boomerang report` rebuilds any folder as "run").
        settings=report_settings(
            job.settings, record.get("command") or job.mode, job.settings.public_dict(model.get("weights_sha256"))
        ),
        versions={
            **record.get("versions", {}),
            **{f"model {k}": v for k, v in model.items()},
        },
        summary=summary,
        failures=failures,
        samples=samples,
        notice=notice,
        sections=list(sections),
        verdict=list(verdict),
        gate_thresholds=gate,
    )
    folder = report_dir or layout.report
    for name, text in files.items():  # index.html last: it names the others (each write makes its folder)
        storage.write_text(folder / name, text)
    return folder / "index.html"


def _input_ids(job: Job) -> list[str]:
    """The anon_ids of the input the report describes: the current input's, else (a rebuilt report) those the
    folder knows."""
    if job.inputs is not None and job.anon_ids:
        return list(job.anon_ids.values())
    if job.layout.identities.exists():
        return storage.read_table(job.layout.identities, columns=["anon_id"]).column("anon_id").to_pylist()
    return []


def _original_thumbnails(job: Job, rows: pd.DataFrame) -> dict[str, bytes]:
    from anonymize import ImageError, decode_image, encode_png

    from .inputs import read_bytes

    identities = storage.read_table(job.layout.identities).to_pandas().set_index("anon_id")
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
        top = ", ".join(f"{reason} {n}" for reason, n in reasons.value_counts().head(3).items())
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
