"""The release gate: raise each image's level along a ladder only as far as the recognizers require.

Rounds over one output folder: round k anonymizes and evaluates, at ladder[k], the images that no
lower level cleared. An image clears a level when every recognizer's distance exceeds its threshold.
Each round is an ordinary resumable pass, and which images remain is recomputed from
evaluation/distances.parquet, so a job killed between (or inside) rounds resumes where it stopped.
"""

from __future__ import annotations

import html
import shutil

import pandas as pd

from evaluation import read_distances, write_parquet_atomic

from .finalize import JobResult, build_report, finalize
from .job import Job, run_pass
from .records import MANIFEST_SCHEMA, read_parts

RELEASE_COLUMNS = ("anon_id", "level", "t_boom", "n_steps", "sha256_output", "output_path")


def cleared_levels(distances: pd.DataFrame, recognizers: tuple[str, ...]) -> pd.DataFrame:
    """Per (anon_id, level): cleared = every recognizer evaluated it and found distance > threshold."""
    if distances.empty:
        return pd.DataFrame(columns=["anon_id", "level", "cleared"])
    d = distances[distances["recognizer"].isin(recognizers)].copy()
    d["ok_cleared"] = (d["status"] == "ok") & (d["cleared"].fillna(False).astype(bool))
    grouped = d.groupby(["anon_id", "level"]).agg(n=("recognizer", "nunique"), k=("ok_cleared", "sum"))
    grouped["cleared"] = (grouped["n"] == len(recognizers)) & (grouped["k"] == len(recognizers))
    return grouped.reset_index()[["anon_id", "level", "cleared"]]


def run_gate(job: Job) -> JobResult:
    settings = job.settings
    ladder = settings.ladder
    remaining = {item.image_id for item in job.inputs.items}
    for level in ladder:
        if not remaining:
            break
        run_pass(job, (level,), image_ids=remaining, label=f"gate level {level:g}")
        manifest = read_parts(job.layout.manifest, MANIFEST_SCHEMA)
        status = cleared_levels(read_distances(job.layout.distances), settings.evaluation.recognizers)
        cleared = set(status.loc[status["cleared"] & (status["level"] == level), "anon_id"])
        failed = set(manifest.loc[(manifest["status"] != "ok") & (manifest["level"] == level), "anon_id"])
        # A file that cannot be read at one level cannot at any: stop spending rounds on it.
        remaining = {i for i in remaining if job.anon_ids[i] not in cleared | failed}
    release = build_release(job)
    section = gate_section(job)  # the same for both reports: decide() reads every part file
    result = finalize(job, sections=[section], extra={"gate": release})
    # The public report travels with the release: no source paths, and no originals even if asked for.
    build_report(
        job,
        result.manifest,
        result.summary,
        read_distances(job.layout.distances),
        [section],
        report_dir=job.layout.release / "report",
        originals=False,
    )
    return result


def decide(job: Job) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(released rows at their lowest clearing level, withheld anon_ids with the reason)."""
    manifest = read_parts(job.layout.manifest, MANIFEST_SCHEMA)
    status = cleared_levels(read_distances(job.layout.distances), job.settings.evaluation.recognizers)
    ok = manifest[manifest["status"] == "ok"].merge(status, on=["anon_id", "level"], how="left")
    ok["cleared"] = ok["cleared"].fillna(False).astype(bool)
    released = ok[ok["cleared"]].sort_values("level").groupby("anon_id", as_index=False).first()
    withheld_ids = sorted(set(manifest["anon_id"]) - set(released["anon_id"]))
    reasons = []
    for aid in withheld_ids:
        rows = manifest[manifest["anon_id"] == aid].sort_values("level")
        last = rows.iloc[-1]
        reason = last["error"] if last["status"] != "ok" else "no level on the ladder cleared every recognizer"
        reasons.append({"anon_id": aid, "last_level": float(last["level"]), "reason": reason})
    withheld = pd.DataFrame(reasons, columns=["anon_id", "last_level", "reason"])
    return released, withheld


def build_release(job: Job) -> dict:
    """release/: exactly the cleared images at their lowest clearing level; withheld ones in private/."""
    import pyarrow as pa

    layout = job.layout
    released, withheld = decide(job)
    target = layout.release
    if target.exists():
        shutil.rmtree(target)
    (target / "images").mkdir(parents=True)
    rows = []
    for row in released.itertuples():
        name = f"{row.anon_id}.png"
        shutil.copyfile(layout.root / row.output_path, target / "images" / name)
        rows.append(
            {
                "anon_id": row.anon_id,
                "level": float(row.level),
                "t_boom": int(row.t_boom),
                "n_steps": int(row.n_steps),
                "sha256_output": row.sha256_output,
                "output_path": f"images/{name}",
            }
        )
    schema = pa.schema(
        [
            ("anon_id", pa.string()),
            ("level", pa.float64()),
            ("t_boom", pa.int32()),
            ("n_steps", pa.int32()),
            ("sha256_output", pa.string()),
            ("output_path", pa.string()),
        ]
    )
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=schema), target / "manifest.parquet")
    identities = read_parts(layout.identities).drop_duplicates("anon_id")
    withheld = withheld.merge(identities[["anon_id", "image_id", "source"]], on="anon_id", how="left")
    write_parquet_atomic(pa.Table.from_pandas(withheld, preserve_index=False), layout.private / "withheld.parquet")
    return {"released": len(rows), "withheld": int(len(withheld))}


def gate_section(job: Job) -> tuple[str, str]:
    """The report's gate section: levels needed, never cleared, and the cost against a fixed top level."""
    released, withheld = decide(job)
    manifest = read_parts(job.layout.manifest, MANIFEST_SCHEMA)
    ladder = job.settings.ladder
    per_level = released.groupby("level").size().reindex(ladder, fill_value=0)
    spent = int(manifest.loc[manifest["status"] == "ok", "n_steps"].sum())
    top = manifest[(manifest["level"] == ladder[-1]) & (manifest["status"] == "ok")]["n_steps"]
    n_images = manifest["anon_id"].nunique()
    rows = "".join(f"<tr><td>{lvl:g}</td><td>{n}</td></tr>" for lvl, n in per_level.items())
    if len(top):
        fixed = int(top.iloc[0]) * n_images
        cost = (
            f"{spent} model evaluations spent; a fixed level {ladder[-1]:g} for all {n_images} images "
            f"would take {fixed} ({spent / fixed:.0%} of it)."
        )
    else:
        cost = f"{spent} model evaluations spent; no image needed the top level {ladder[-1]:g}."
    body = (
        f"<p>Ladder: {', '.join(f'{v:g}' for v in ladder)}. Each image starts at the lowest level and moves up "
        "only while some recognizer still matches it to its original.</p>"
        f"<table><tr><th>lowest clearing level</th><th>images released</th></tr>{rows}</table>"
        f"<p>Released: {len(released)}; withheld (never cleared, or failed): {len(withheld)}. "
        "By construction every released image clears every recognizer (100%).</p>"
        f"<p>{html.escape(cost)}</p>"
    )
    return ("Release gate", body)
