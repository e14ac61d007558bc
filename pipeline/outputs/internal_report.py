"""The run's HTML reports, built through evaluation.report: the internal one in report/ (samples, thumbnails of the
originals with --report-originals, the document rows: date, tool, keyed input digest) and, through the same code,
the release report the gate writes beside release/ (pipeline.release.gate)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from evaluation import render_report
from pipeline.folder import storage
from pipeline.folder.provenance import read_json
from pipeline.outputs.report_document import document_rows, input_digest, report_settings, run_secret, thumbnail
from pipeline.settings.config import public_model
from pipeline.settings.gate_policy import override_statement

if TYPE_CHECKING:
    from pipeline.execution.job import Job

SAMPLE_IMAGES = 12

# What finalize, the report and the closing lines read of the manifest (not hashes, timings, step counts).
MANIFEST_COLUMNS = ["anon_id", "level", "t_boom", "status", "error", "output_path"]


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
    if covers is None and job.inputs is not None and job.index is not None:  # the lists, a shard at a time
        what, count = "input", job.index.total
        digest = input_digest(run_secret(job), job.index.sorted_anon_ids(), ordered=True)
    else:
        what, ids = covers or ("input", _input_ids(job))
        count, digest = len(ids), input_digest(run_secret(job), ids)
    files = render_report(
        title="Boomerang anonymization report",
        document=document_rows(record, count, digest, what),
        samples_heading=samples_heading,
        # The command that made the folder (`boomerang report` rebuilds any folder as "run").
        settings=report_settings(
            job.settings, record.get("command") or job.stages, job.settings.public_dict(model.get("weights_sha256"))
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
    from pipeline.execution.inputs import read_bytes

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
