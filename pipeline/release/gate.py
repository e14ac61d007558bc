"""The release gate: raise each image's level along a ladder only as far as the recognizers require.

Rounds over one output folder: round k anonymizes and evaluates, at ladder[k], the images that no
lower level cleared. An image clears a level when every requested recognizer evaluated it and found a
distance above the GATE threshold: the stricter of the run's threshold and deepface's own for that
model and metric, so the gate never releases what `DeepFace.verify` calls the same person (unless
--gate-thresholds explicitly lowers it, which the report then says first). Each round is an ordinary
resumable pass; what remains is recomputed from the Parquet files, so a killed job resumes where it
stopped. Only ladder levels count: rows of other levels in the same folder (an earlier sweep) are ignored.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from evaluation import DISTANCES_SCHEMA
from evaluation.report_blocks import Section, Text, rows_table, section
from pipeline.execution.anonymize_pass import plan_pass, run_planned
from pipeline.execution.discovery import ListedIds
from pipeline.execution.job import Job
from pipeline.folder import storage
from pipeline.folder.lock_common import ensure_held
from pipeline.folder.provenance import read_json
from pipeline.outputs.finalize import JobResult, finalize
from pipeline.outputs.internal_report import build_report
from pipeline.outputs.linkage_attack import linkable
from pipeline.outputs.report_document import document_rows, input_digest, run_secret
from pipeline.release.card import released_summary, write_dataset_files
from pipeline.release.gate_decision import Decision, decide, decided_ids, settled_in
from pipeline.release.swap import copy_synced, release_key, release_name, staged_folder
from pipeline.settings.gate_policy import gate_thresholds, lowered_gate_thresholds
from pipeline.tables.schemas import RELEASE_SCHEMA, RELEASED_SCHEMA
from pipeline.tables.write import write_private_table, write_public_table


def run_gate(job: Job) -> JobResult:
    thresholds = gate_thresholds(job.settings)
    ladder = [float(v) for v in job.settings.ladder]
    for rung, level in enumerate(ladder, 1):
        earlier = ladder[: rung - 1]
        # The linkage rule's outputs held back (an output's rank among the originals does not change with rungs).
        maximum = job.settings.gate_max_linkage
        too_close = linkable(job.layout, maximum) if maximum and earlier else set()
        # Each rung plans the images no lower rung settled, read a shard at a time from the tables.
        plan = plan_pass(
            job, (level,), skip=lambda shard, e=earlier, c=too_close: settled_in(job, shard, e, thresholds, c)
        )
        if not plan.items:
            plan.spool.remove()
            break
        run_planned(job, plan, label=f"gate level {level:g} (rung {rung} of {len(ladder)})")
    return finish_gate(job)


def finish(job: Job) -> JobResult:
    """What derives from a run's tables, rebuilt (`boomerang report`, after a forget): the gate's decision and
    release with --gate, else finalize."""
    return finish_gate(job) if job.settings.gate else finalize(job)


def finish_gate(job: Job) -> JobResult:
    """release/, both reports and run.json from the Parquet files (also what `boomerang report` does).

    release/ (its images, manifest and public report) is built in a staging folder and swapped in whole
    (pipeline.release.swap): a build that fails or is killed leaves the previous release as it was.
    """
    lowered = lowered_gate_thresholds(job.settings)
    if lowered:
        items = ", ".join(f"{name} {gate:g} (deepface's own: {own:g})" for name, (gate, own) in lowered.items())
        warning = (
            f"WARNING: --gate-thresholds lowers the gate below deepface's own threshold for {items}: released "
            "images may be ones that DeepFace.verify calls the same person as their original."
        )
        job.notice = f"{warning} {job.notice}" if job.notice else warning
    decision = decide(job, current_ids(job))
    try:
        return _release(job, decision)
    finally:
        decision.remove()


def _release(job: Job, decision: Decision) -> JobResult:
    released, withheld = decision.released, decision.withheld
    ensure_held(job.layout.lock_file)  # the release is the last commit: not for a driver that lost the folder
    with staged_folder(job.layout.release) as folder:
        gate, names = build_release(job, released, withheld, folder)
        gate["released_with_a_unique_size"] = len(decision.unique_size)
        section = gate_section(job, decision)
        pairs = set(zip(released["anon_id"], released["level"].astype(float), strict=True))
        result = finalize(job, sections=[section], extra={"gate": gate}, released=pairs, released_rows=released)
        # The public report travels with the release: only released images, byte for byte as released.
        shown = released.assign(release_id=released["anon_id"].map(names)).sort_values("release_id").head(12)
        samples = [
            (f"released, level {row.level:.2f}", (folder / "images" / f"{row.release_id}.png").read_bytes())
            for row in shown.itertuples()
        ]
        failures = result.overview.failures
        failures = failures[failures["anon_id"].isin(released["anon_id"])]
        # The release report and its card describe exactly the released set (release_card).
        covers = ("release", list(released["anon_id"]))
        build_report(
            job,
            failures.assign(anon_id=failures["anon_id"].map(names)),  # the release's names, not the internal ones
            released_summary(job, released) if result.summary is not None else None,
            DISTANCES_SCHEMA.empty_table().to_pandas(),
            samples,
            [section],
            report_dir=folder / "report",
            verdict=result.verdict,
            gate=gate["thresholds"],
            samples_heading="Released images",
            covers=covers,
        )
        document = document_rows(
            read_json(job.layout.run_json), len(covers[1]), input_digest(run_secret(job), covers[1]), "release"
        )
        write_dataset_files(job, folder, result.verdict, document, gate["thresholds"])
    return result


def current_ids(job: Job) -> set[str] | ListedIds | None:
    """The anon_ids the gate may release: those of the current input (an image deleted from it, e.g. a
    person who withdrew consent, is never released again). Without inputs (`boomerang report`): those the
    last gate decided on (private/released.parquet and withheld.parquet); None for a folder from before
    those were kept."""
    if job.index is not None:  # read from the input's lists a step at a time (pipeline.execution.discovery)
        return ListedIds(job.index)
    if job.inputs is not None:
        return set(job.anon_ids.values())
    return decided_ids(job.layout)


def build_release(job: Job, released: pd.DataFrame, withheld: pd.DataFrame, folder) -> tuple[dict, dict[str, str]]:
    """The release into `folder` (a staging folder): exactly the cleared images at their lowest clearing level,
    under release names; the name mapping and the withheld ones in private/. Returns (counts for run.json,
    anon_id -> release_id)."""
    layout = job.layout
    key = release_key(layout, job.secret)
    names = {a: release_name(key, a) for a in released["anon_id"]}
    storage.make_dirs(folder / "images")
    rows, mapping = [], []
    # Sorted by release name (a keyed hash): no trace of the source order or the internal names.
    ordered = released.assign(release_id=released["anon_id"].map(names)).sort_values("release_id")
    for row in ordered.itertuples():
        name = f"{row.release_id}.png"
        copy_synced(layout.root / row.output_path, folder / "images" / name)
        rows.append(
            {
                "release_id": row.release_id,
                "level": float(row.level),
                "t_boom": int(row.t_boom),
                "n_steps": int(row.n_steps),
                "sha256_output": row.sha256_output,
                "output_path": f"images/{name}",
            }
        )
        mapping.append({"anon_id": row.anon_id, "release_id": row.release_id, "level": float(row.level)})
    write_public_table(pa.Table.from_pylist(rows, schema=RELEASE_SCHEMA), folder / "manifest.parquet")
    write_private_table(pa.Table.from_pylist(mapping, schema=RELEASED_SCHEMA), layout.private / "released.parquet")
    identities = storage.read_table(layout.identities).to_pandas()
    private = withheld.merge(identities[["anon_id", "image_id", "source"]], on="anon_id", how="left")
    write_private_table(pa.Table.from_pandas(private, preserve_index=False), layout.private / "withheld.parquet")
    counts = {
        "released": len(rows),
        "withheld": int(len(withheld)),
        "withheld_reasons": {str(k): int(v) for k, v in withheld["reason"].value_counts().items()},
        "thresholds": gate_thresholds(job.settings),
    }
    return counts, names


def gate_section(job: Job, decision: Decision) -> Section:
    """The report's gate section: thresholds, levels needed, withheld reasons, cost against a fixed top level."""
    from anonymize import planned_steps

    settings = job.settings
    released, withheld = decision.released, decision.withheld
    unique_sizes = len(decision.unique_size)
    ladder = [float(v) for v in settings.ladder]
    per_level = released.groupby("level").size().reindex(ladder, fill_value=0)
    spent, n_images = decision.spent_steps, decision.n_images
    # The alternative: every image that could be processed, once, at the top rung.
    try:
        _, top_steps = planned_steps(settings.sampler, ladder[-1])
        fixed = top_steps * n_images
        cost = (
            f"{spent} model evaluations spent on {n_images} images; one pass at the top level {ladder[-1]:g} "
            f"would take {fixed} ({top_steps} each)"
            + (f": the gate cost {spent / fixed:.0%} of that." if fixed else ".")
        )
    except Exception:  # noqa: BLE001 - the model folder may be gone when a report is rebuilt
        cost = f"{spent} model evaluations spent on {n_images} images."
    thresholds = gate_thresholds(settings)
    linkage = (
        f", and no recognizer ranked its own original within the nearest {settings.gate_max_linkage} of all "
        "originals (the linkage attack, --gate-max-linkage)"
        if settings.gate_max_linkage
        else ""
    )
    sizes = (
        Text(
            f"{unique_sizes} released images have a width and height that no other input has: someone holding the "
            "originals can match them by size alone. Resize the inputs to common sizes before release "
            "(docs/privacy.md).",
            "notice",
        )
        if unique_sizes
        else Text("No released image has a size of its own among the inputs (sizes do not link them).")
    )
    reasons = withheld["reason"].value_counts().items()
    return section(
        "Release gate",
        Text(
            f"Ladder: {', '.join(f'{v:g}' for v in ladder)}. Each image starts at the lowest level and moves up "
            "only while some recognizer still matches it to its original. Gate thresholds (the stricter of the "
            "run's threshold and deepface's own, unless set with --gate-thresholds): "
            + ", ".join(f"{n} {t:g}" for n, t in thresholds.items())
            + "."
        ),
        rows_table(["lowest clearing level", "images released"], [(f"{lvl:g}", n) for lvl, n in per_level.items()]),
        Text(
            f"Released: {len(released)}; withheld: {len(withheld)}. Every released image cleared every recognizer "
            f"at its gate threshold{linkage}."
        ),
        rows_table(["withheld because", "images"], [(str(r), n) for r, n in reasons], 1) if len(withheld) else None,
        Text(cost),
        sizes,
        Text(SCENE_LINKAGE_NOTICE, "notice") if settings.region.faces else None,
    )


# Face-region mode: what the release gives away by construction (said in the public report, docs/privacy.md).
SCENE_LINKAGE_NOTICE = (
    "Face-region mode (--region faces, released with --accept-scene-linkage): only the faces were resampled and "
    "every other pixel is the original's, so anyone who holds the original photos links each released image to "
    "its source by its background. What this release protects is who is in the photos (the faces, measured "
    "above), not which photo each one is; clothing, places and other people's context are also kept."
)
