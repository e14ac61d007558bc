"""`boomerang forget`: consent withdrawal. Remove every trace of some input images from a run folder.

The images are named as the input names them (the path relative to a folder input, the id column of a
Parquet input) or by who is in them (`--identity`, where the run was told: --identity-from/--identity-column).
private/identities.parquet turns them into their anon_ids (one per image and local sample); the run's secret
recomputes the anon_ids of ids it no longer lists (a forget killed midway) and their release names. Then:

1. every file named after one of them goes: outputs at every level and sample (images/), the training set's
   copies (train/), released files (release/images/);
2. their rows go from every Parquet file of the folder, private/ included (manifest, distances, private
   outputs, embeddings, attacks, withheld, the release mapping, any shard file or batch part): shard files
   are rewritten without them, a manifest shard file with its marker recomputed, so a later run's resume
   stays exact; a shard boundary that was one of their anon_ids is moved to the next id kept;
3. private/identities.parquet last (until then a rerun of the same forget finds them again);
4. run.json records the date and how many images went, never which;
5. what derives from the tables is rebuilt as `boomerang report` does: the summary, the attacks, both reports
   and release/ (staged and swapped in whole; the gate releases only images it decided on before), and an
   enhance folder's enhanced/ (its outputs under their input names).

The folder's lock is held throughout, as by a job. The operator must also remove the images from the input:
a run over an input that still holds them would make them again.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.folder import storage
from pipeline.folder.layout import OutputError, RunLayout
from pipeline.folder.lock import run_lock
from pipeline.folder.provenance import now, read_json, write_json_atomic
from pipeline.folder.secret import anon_id, output_key, parse_secret
from pipeline.release.gate_decision import decision_folder
from pipeline.release.swap import release_key, release_name, remove_leftovers
from pipeline.tables.input_lists import remove_lists
from pipeline.tables.markers import read_marker, with_marker
from pipeline.tables.shards import SHARD_NAME, SHARDS_FILE
from pipeline.tables.work_spool import work_folder
from pipeline.tables.write import write_private_table, write_public_table


@dataclass
class Forgotten:
    """What a forget did, in counts only."""

    images: int  # input images found and removed
    not_found: int  # given ids or identity names that matched no image of the run
    files: int  # files deleted
    rows: int  # table rows deleted


def read_ids(path: str) -> list[str]:
    """The ids in a file, one per line (blank lines skipped); one-line OutputError if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.rstrip("\r\n") for line in handle]
    except (OSError, UnicodeDecodeError) as err:
        raise OutputError(
            f"--ids {path!r} cannot be read ({type(err).__name__}); give a text file, one id a line"
        ) from None
    return [line for line in lines if line.strip()]


def forget(out: str, ids: list[str] = (), identities: list[str] = ()) -> Forgotten:
    """Remove the images named by `ids` and everyone's images labelled with one of `identities` (see the module)."""
    if not ids and not identities:
        raise OutputError("forget: name the images with --ids FILE or --identity NAME")
    layout = RunLayout.at(out)
    layout.check_store()
    if not layout.holds_run():
        raise OutputError(f"{layout.root} holds no boomerang run (no run.json); pass the run's --out folder")
    with run_lock(layout.lock_file) as lock:
        secret = _secret(layout)
        known = _identities(layout)
        targets, images, not_found = resolve(known, secret, list(ids), list(identities))
        key = release_key(layout, secret)
        names = targets | {release_name(key, a) for a in targets}
        remove_leftovers(layout.release)
        # A killed job's input lists and scratch tables hold them too: the next run makes them again.
        remove_lists(layout)
        storage.remove_tree(decision_folder(layout))
        storage.remove_tree(work_folder(layout))
        files = remove_files(layout, names)
        rows = remove_rows(layout, names, skip=[layout.identities])
        _move_boundaries(layout, known, targets)
        # The mapping last: until it is rewritten, running the same forget again finds every image again.
        rows += remove_rows_of(layout, layout.identities, names) if layout.identities.is_file() else 0
        if images:
            record = read_json(layout.run_json)
            record.setdefault("forgotten", []).append({"date": now(), "count": images})
            write_json_atomic(layout.run_json, record)
        # Always: a forget killed before its rebuild left reports that may still show them.
        rebuild(layout, lock, secret)
    return Forgotten(images, not_found, files, rows)


def _secret(layout: RunLayout) -> bytes:
    path = layout.secret_file
    if not path.exists():
        raise OutputError(f"{layout.root} has no private/secret: restore it from a backup of this run first")
    return parse_secret(path.read_text(encoding="ascii", errors="replace"), f"{path}")


def _identities(layout: RunLayout) -> pd.DataFrame:
    columns = ["anon_id", "image_id", "identity", "sample"]
    if not layout.identities.is_file():
        return pd.DataFrame(columns=columns)
    found = storage.read_table(layout.identities).to_pandas()
    for column in columns:
        if column not in found:  # written before identities or samples were kept
            found[column] = 0 if column == "sample" else None
    return found[columns]


def resolve(known: pd.DataFrame, secret: bytes, ids: list[str], identities: list[str]) -> tuple[set[str], int, int]:
    """(anon_ids to remove, images found, given names that matched nothing)."""
    image_ids = known["image_id"].astype(str).tolist()
    # A Parquet input's repeated id is kept as "id#2", "id#3", ... (pipeline.execution.inputs): those are the same image
    # id.
    base = [re.sub(r"#\d+$", "", i) for i in image_ids]
    wanted = set(ids)
    by_id = [i in wanted or b in wanted for i, b in zip(image_ids, base, strict=True)]
    matched_ids = {i for i, hit in zip(image_ids, by_id, strict=True) if hit and i in wanted}
    matched_ids |= {b for b, hit in zip(base, by_id, strict=True) if hit and b in wanted}
    by_name = known["identity"].isin(identities).tolist() if identities else [False] * len(known)
    if identities and known["identity"].isna().all():
        raise OutputError(
            "--identity: this run does not know who is in its images (it was made without --identity-from or "
            "--identity-column); name the images with --ids FILE"
        )
    chosen = known[[a or b for a, b in zip(by_id, by_name, strict=True)]]
    targets = set(chosen["anon_id"])
    # Ids the table no longer lists (a forget killed after it rewrote identities): their keyed names, every sample.
    samples = int(pd.to_numeric(known["sample"], errors="coerce").fillna(0).max() + 1) if len(known) else 1
    targets |= {anon_id(secret, output_key(i, s)) for i in ids for s in range(max(samples, 1))}
    images = len(set(chosen["image_id"]))
    found_names = set(chosen["identity"].dropna())
    not_found = len(wanted - matched_ids) + len(set(identities) - found_names)
    return targets, images, not_found


def _stem(name: str) -> str:
    """The name a file is keyed by: `<id>.png`, and a writer's temporary `.<id>.png.<hex>.tmp`."""
    return name.lstrip(".").split(".", 1)[0]


def remove_files(layout: RunLayout, names: set[str]) -> int:
    """Delete every file of the run folder named after one of `names` (anon_ids and release names)."""
    doomed = [p for p in layout.root.rglob("*") if _stem(p.name) in names and p.is_file()]
    for path in doomed:
        storage.remove_tree(path)
    return len(doomed)


def remove_rows(layout: RunLayout, names: set[str], *, skip=()) -> int:
    """Delete, from every Parquet file of the run folder but those in `skip`, the rows that name one of
    `names` in a string column (an anon_id, a release name) or in a path column's file name; returns the
    rows deleted. Table folders (manifest, distances, outputs, embeddings) go in the order a shard's files
    are written, the manifest's last."""
    order = {layout.embeddings: 0, layout.distances: 1, layout.outputs: 2, layout.manifest: 3}
    skipped = {str(p) for p in skip}
    paths = [p for p in layout.root.rglob("*.parquet") if p.is_file() and str(p) not in skipped]
    paths = [p for p in paths if not p.name.startswith(".")]  # a writer's temporary file, not a table
    paths.sort(key=lambda p: (order.get(p.parent, -1), str(p)))
    return sum(remove_rows_of(layout, path, names, row_file=path.parent in order) for path in paths)


def remove_rows_of(layout: RunLayout, path, names: set[str], row_file: bool = False) -> int:
    """`remove_rows` for one file; `row_file`: a shard file or batch part, deleted when no row is left."""
    schema = storage.read_schema(path)
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if not text:
        return 0
    table = storage.read_table(path)
    if not len(table):
        return 0
    value_set = pa.array(sorted(names), pa.string())
    drop = pa.array([False] * len(table), pa.bool_())
    for column in text:
        values = table.column(column)
        drop = pc.or_(drop, pc.fill_null(pc.is_in(values, value_set=value_set), False))
        if column.endswith("path"):
            stems = [v is not None and PurePosixPath(v).stem in names for v in values.to_pylist()]
            drop = pc.or_(drop, pa.array(stems, pa.bool_()))
    count = int(pc.sum(drop).as_py() or 0)
    if not count:
        return 0
    kept = table.filter(pc.invert(drop))
    if row_file and not len(kept):
        storage.remove_tree(path)  # a shard's file with no row left: as if its rows were never made
        return count
    if path.parent == layout.manifest and SHARD_NAME.match(path.name):
        marker = read_marker(layout, int(SHARD_NAME.match(path.name).group(1)))
        kept = with_marker(kept, bool(marker and marker["evaluated"]))
    private = layout.private in path.parents
    (write_private_table if private else write_public_table)(kept, path)
    return count


def _move_boundaries(layout: RunLayout, known: pd.DataFrame, targets: set[str]) -> None:
    """A shard boundary is the first anon_id of its shard: where it is a forgotten one, move it to the first
    anon_id kept in that shard (every kept id stays in its shard), or onto the next boundary if none is."""
    path = layout.manifest / SHARDS_FILE
    if not path.exists():
        return
    data = json.loads(path.read_text())
    starts = list(data["starts"])
    if not set(starts) & targets:
        return
    kept = sorted(set(known["anon_id"]) - targets)
    old = list(starts)
    # From the last boundary down: an empty shard's boundary takes the next one's new value.
    for k in reversed(range(len(starts))):
        if old[k] not in targets:
            continue
        end = old[k + 1] if k + 1 < len(old) else None
        first = bisect.bisect_left(kept, old[k])  # the first id kept at or after the boundary
        inside = first < len(kept) and (end is None or kept[first] < end)
        # With no id kept in the last shard, any value above every kept id keeps them where they are.
        starts[k] = kept[first] if inside else starts[k + 1] if end is not None else "g" * len(old[k])
    storage.write_text(path, json.dumps({**data, "starts": starts}))


def rebuild(layout: RunLayout, lock, secret: bytes) -> None:
    """What derives from the tables, rebuilt from them as `boomerang report` does (the internal report is
    removed first: it may show one of the images removed)."""
    from pipeline.execution.job import finished_job, recorded_settings
    from pipeline.release.gate import finish

    storage.remove_tree(layout.report)
    record = read_json(layout.run_json)
    if not record.get("settings"):
        return
    if record["settings"].get("enhance"):  # enhance's outputs under their input names, without the removed ones
        from pipeline.outputs.enhanced_folder import build_enhanced

        build_enhanced(layout)
    finish(finished_job(recorded_settings(layout, record), layout, record, lock, secret))
