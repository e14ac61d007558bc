"""After the stream: summary.parquet, the HTML report, run.json's end record, the closing paragraph."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from evaluation import read_distances, summarize, write_parquet_atomic, write_report

from .job import DEMO_NOTICE, Job
from .provenance import now, read_json, write_json_atomic
from .records import MANIFEST_SCHEMA, read_parts

SAMPLE_IMAGES = 12


@dataclass
class JobResult:
    job: Job
    manifest: pd.DataFrame
    summary: pd.DataFrame | None
    report: str | None
    extra: dict


def finalize(job: Job, sections: list[tuple[str, str]] = (), extra: dict | None = None) -> JobResult:
    """Rebuild the summary and report from the Parquet files (so they always agree with them)."""
    layout = job.layout
    manifest = read_parts(layout.manifest, MANIFEST_SCHEMA)
    summary = None
    report = None
    if job.evaluated or layout.distances.is_dir() and any(layout.distances.glob("part-*.parquet")):
        distances = read_distances(layout.distances)
        summary = summarize(distances, job.settings.evaluation)
        write_parquet_atomic(_summary_table(summary), layout.summary)
        report = str(build_report(job, manifest, summary, distances, sections))
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


def _summary_table(summary: pd.DataFrame):
    import pyarrow as pa

    from evaluation import SUMMARY_SCHEMA

    return pa.Table.from_pandas(summary[SUMMARY_SCHEMA.names], schema=SUMMARY_SCHEMA, preserve_index=False)


def counts(manifest: pd.DataFrame) -> dict:
    return {
        "images": int(manifest["anon_id"].nunique()),
        "levels": sorted(float(v) for v in manifest["level"].unique()),
        "rows": int(len(manifest)),
        "ok": int((manifest["status"] == "ok").sum()),
        "errors": int((manifest["status"] != "ok").sum()),
    }


def build_report(job: Job, manifest, summary, distances, sections=(), report_dir=None, originals=None):
    """Write the HTML report (to report/ unless `report_dir`); originals only with --report-originals."""
    layout = job.layout
    originals_wanted = job.settings.report_originals if originals is None else originals
    ok = manifest[manifest["status"] == "ok"].sort_values(["level", "anon_id"])
    samples = []
    originals = _original_thumbnails(job, ok.head(SAMPLE_IMAGES)) if originals_wanted else {}
    for row in ok.head(SAMPLE_IMAGES).itertuples():
        path = layout.root / row.output_path
        if row.anon_id in originals:
            samples.append((f"{row.anon_id[:8]} ORIGINAL", originals.pop(row.anon_id)))
        if path.exists():
            t_boom = "" if pd.isna(row.t_boom) else f" (t_boom {int(row.t_boom)})"
            samples.append((f"{row.anon_id[:8]} level {row.level:.2f}{t_boom}", path.read_bytes()))
    failures = pd.concat(
        [
            manifest.loc[manifest["status"] != "ok", ["anon_id", "level", "error"]].assign(stage="anonymize"),
            distances.loc[distances["status"] == "error", ["anon_id", "level", "error", "recognizer"]]
            .assign(stage="evaluate")
            .loc[lambda d: ~d["anon_id"].isin(manifest.loc[manifest["status"] != "ok", "anon_id"])],
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
        notice=DEMO_NOTICE if job.settings.demo else None,
        sections=list(sections),
    )


def _original_thumbnails(job: Job, rows: pd.DataFrame) -> dict[str, bytes]:
    """Originals for the report, only with --report-originals: re-encoded, so no metadata travels."""
    from anonymize import ImageError, decode_image, encode_png

    from .inputs import read_bytes
    from .records import IDENTITY_SCHEMA

    identities = read_parts(job.layout.identities, IDENTITY_SCHEMA).drop_duplicates("anon_id").set_index("anon_id")
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


def closing_paragraph(result: JobResult) -> str:
    job = result.job
    c = counts(result.manifest)
    levels = ", ".join(f"{v:g}" for v in c["levels"])
    text = [
        f"{c['images']} images at level(s) {levels}: {c['ok']} outputs ok, {c['errors']} failed "
        f"({job.pairs_done_now} processed in this run)."
    ]
    if result.summary is not None and len(result.summary):
        parts = [
            f"{r.recognizer} @ {r.level:g}: {r.fraction_cleared:.0%} cleared ({r.n_cleared}/{r.n_evaluated})"
            for r in result.summary.itertuples()
        ]
        text.append("Fraction cleared (distance > threshold): " + "; ".join(parts) + ".")
    if result.report:
        text.append(f"Report: {result.report}")
    text.append(f"Outputs: {job.layout.root}")
    if job.settings.demo:
        text.append("DEMO: random-weight models; these numbers are not meaningful.")
    return " ".join(text)
