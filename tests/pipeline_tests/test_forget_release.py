"""The release as its own namespace, and consent withdrawal (`boomerang forget`).

A release holds only images of the current input, under names keyed apart from the internal anon_ids, and is
swapped in whole; `forget` removes an image's every trace from the run folder and records only a count.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from samples import write_faces
from scans import embedded_images, leaks

from pipeline.folder.layout import RunLayout
from pipeline.release.forget import _move_boundaries, remove_rows_of
from pipeline.release.swap import release_key, release_name, staged_folder
from pipeline.tables.markers import read_marker, shard_marker
from pipeline.tables.shards import load_shards, plan_shards, shard_files
from pipeline.tables.work_spool import WorkSpool

PEOPLE = ("Ann_Lee", "Bob_Ray", "Cy_Doe")


def gate_argv(data: Path, out: Path, secret: Path, *extra: str) -> list[str]:
    # A fixed secret fixes the seeds: the same distances, so the same decisions, on every run of this machine.
    return ["run", str(data), "--out", str(out), "--gate", "--ladder", "0.5", "--secret-file", str(secret), *extra]


def fixed_secret(folder: Path) -> Path:
    secret = folder / "secret"
    secret.write_text(bytes(range(32)).hex() + "\n")
    return secret


def anon_ids_of(out: Path, image_ids) -> set[str]:
    identities = pd.read_parquet(out / "private" / "identities.parquet")
    return set(identities.loc[identities["image_id"].isin(list(image_ids)), "anon_id"])


def output_hashes(out: Path, anon_ids: set[str]) -> set[str]:
    manifest = pd.read_parquet(out / "manifest.parquet")
    return set(manifest.loc[manifest["anon_id"].isin(anon_ids) & (manifest["status"] == "ok"), "sha256_output"])


def release_hashes(out: Path) -> set[str]:
    """sha256 of every released file and of every image the public report embeds."""
    found = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "release" / "images").iterdir()}
    page = out / "release" / "report" / "index.html"
    return found | {hashlib.sha256(png).hexdigest() for _, png in embedded_images(page.read_text())}


def every_file(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file()]


def traces(out: Path, needles: set[str], hashes: set[str]) -> list[tuple[str, str]]:
    """(file, what) for each needle in any file name, in any file's bytes or Parquet cell or metadata, private/
    included; and for any file (or image embedded in a page) whose bytes hash to one of `hashes`."""
    found = []
    for path in every_file(out):
        relative = str(path.relative_to(out))
        blob = path.read_bytes()
        texts = [relative, blob.decode("utf-8", "replace")]
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            texts += [str(v) for column in table.columns for v in column.to_pylist()]
            texts.append(str(table.schema.metadata or ""))
        found += [(relative, n) for n in needles if any(n in t for t in texts)]
        if hashlib.sha256(blob).hexdigest() in hashes:
            found.append((relative, "an output's bytes"))
        if path.suffix == ".html":
            shown = {hashlib.sha256(png).hexdigest() for _, png in embedded_images(blob.decode())}
            found += [(relative, "an embedded output") for _ in shown & hashes]
    return found


@pytest.mark.slow
def test_a_person_deleted_from_the_input_is_never_released_again(cli, tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    ids = write_faces(data, 4, size=(64, 64), people=PEOPLE[:2])
    secret = fixed_secret(tmp_path)
    status, _, err = cli(*gate_argv(data, out, secret))
    assert status == 0, err
    bob = anon_ids_of(out, [i for i in ids if i.startswith(PEOPLE[1])])
    theirs = output_hashes(out, bob)
    assert theirs & release_hashes(out), "none of the person's outputs was released: the check would be vacuous"

    # The person withdraws consent: the operator deletes their folder and runs the gate again.
    shutil.rmtree(data / PEOPLE[1])
    status, _, err = cli(*gate_argv(data, out, secret))

    assert status == 0, err
    assert not theirs & release_hashes(out)
    manifest = pd.read_parquet(out / "release" / "manifest.parquet")
    assert not theirs & set(manifest["sha256_output"])
    assert json.loads((out / "run.json").read_text())["gate"]["released"] == len(manifest) > 0
    # A run made without --identity-from does not know who is in its images: forget --identity says so.
    status, _, err = cli("forget", str(out), "--identity", PEOPLE[1])
    assert status == 2 and "--identity-from" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_release_names_are_keyed_apart_from_every_internal_name(cli, tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    write_faces(data, 4, size=(64, 64), people=PEOPLE[:2])
    secret = fixed_secret(tmp_path)
    status, _, err = cli(*gate_argv(data, out, secret))
    assert status == 0, err
    release = pd.read_parquet(out / "release" / "manifest.parquet")
    names = set(release["release_id"])
    assert names and "anon_id" not in release.columns
    assert sorted(p.stem for p in (out / "release" / "images").iterdir()) == sorted(names)
    assert list(release["release_id"]) == sorted(release["release_id"])  # ordered by the keyed name alone
    # No internal table or file name carries a release name (the private mapping aside) ...
    mapping = out / "private" / "released.parquet"
    internal = [p for p in every_file(out) if "release" not in p.relative_to(out).parts and p != mapping]
    for path in internal:
        assert not any(n in path.name for n in names), path
        if path.suffix == ".parquet":
            cells = {str(v) for column in pq.read_table(path).columns for v in column.to_pylist()}
            assert not cells & names, path
    # ... and nothing in release/ carries an internal name.
    anon_ids = set(pd.read_parquet(out / "private" / "identities.parquet")["anon_id"])
    assert not leaks(out / "release", sorted(anon_ids))
    # The private mapping links the two only with the secret: another key gives other names.
    pairs = pd.read_parquet(mapping)
    layout = RunLayout.at(str(out))
    key = release_key(layout)
    assert [release_name(key, a) for a in pairs["anon_id"]] == list(pairs["release_id"])
    other = release_key(layout, bytes(range(1, 33)))
    assert not {release_name(other, a) for a in pairs["anon_id"]} & names

    # Stable across reruns with the same secret.
    status, _, err = cli(*gate_argv(data, out, secret))
    assert status == 0, err
    pd.testing.assert_frame_equal(pd.read_parquet(out / "release" / "manifest.parquet"), release)

    # A rebuild that fails midway (an output gone from images/) leaves the release as it was, whole.
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "release").rglob("*") if p.is_file()}
    gone = pd.read_parquet(out / "manifest.parquet").set_index("anon_id").loc[pairs["anon_id"].iloc[-1]]
    (out / gone["output_path"]).unlink()
    from pipeline.cli import main

    assert main(["report", str(out)]) == 1  # unexpected: one line with its type (FileNotFoundError), exit 1
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "release").rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("release")) == ["release"]


def test_a_staged_folder_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    target = tmp_path / "release"
    (target / "images").mkdir(parents=True)
    (target / "images" / "old.png").write_bytes(b"old")
    (target / "manifest.parquet").write_bytes(b"old manifest")

    with pytest.raises(OSError), staged_folder(target) as folder:
        (folder / "images").mkdir()
        (folder / "images" / "new.png").write_bytes(b"new")
        (folder / "missing" / "x").read_bytes()  # the build fails halfway

    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "images/old.png",
        "manifest.parquet",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["release"]  # no staging folder left

    with staged_folder(target) as folder:
        (folder / "images").mkdir()
        (folder / "images" / "new.png").write_bytes(b"new")
    assert [p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()] == ["images/new.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["release"]

    # What a crash between the two renames of an earlier build left beside it is removed by the next build.
    (tmp_path / "release.staging-0123").mkdir()
    (tmp_path / "release.old-4567").mkdir()
    with staged_folder(target) as folder:
        (folder / "a").write_bytes(b"a")
    assert [p.name for p in tmp_path.iterdir()] == ["release"]


def test_forgotten_shard_boundaries_move_and_every_kept_image_stays_in_its_shard(tmp_path):
    layout = RunLayout(tmp_path)
    ids = [f"{i:02x}" * 12 for i in range(0, 200, 10)]  # 20 sorted ids
    old = plan_shards(layout, ids, 3)
    # Boundaries of shards with ids kept, of a whole shard forgotten, of two in a row and of the last shard.
    gone = {old.starts[0], *ids[6:9], *ids[9:12], *ids[18:]}
    assert gone >= {old.starts[1], old.starts[2], old.starts[-1]}
    known = pd.DataFrame({"anon_id": ids})

    _move_boundaries(layout, known, gone)

    new = load_shards(layout)
    assert not set(new.starts) & gone and new.starts == tuple(sorted(new.starts))
    assert all(new.of(a) == old.of(a) for a in ids if a not in gone)


@pytest.mark.slow
def test_forget_removes_every_trace_and_the_gate_cannot_release_them_again(cli, tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    ids = write_faces(data, 6, size=(64, 64), people=PEOPLE)
    secret = fixed_secret(tmp_path)
    # Shards of two images: a shard file then holds rows of people kept and forgotten alike.
    argv = gate_argv(data, out, secret, "--identity-from", "folder", "--shard-size", "2")
    status, _, err = cli(*argv)
    assert status == 0, err
    one = next(i for i in ids if i.startswith(PEOPLE[0]))
    bob = [i for i in ids if i.startswith(PEOPLE[1])]
    gone_ids = anon_ids_of(out, [one, *bob])
    layout = RunLayout.at(str(out))
    key = release_key(layout)
    needles = gone_ids | {release_name(key, a) for a in gone_ids} | {one, *bob, Path(one).stem, PEOPLE[1]}
    hashes = output_hashes(out, gone_ids)
    assert traces(out, needles, hashes), "nothing of theirs in the folder before: the check would be vacuous"
    assert hashes & release_hashes(out), "none of their outputs was released: the check would be vacuous"
    kept = set(pd.read_parquet(out / "private" / "identities.parquet")["anon_id"]) - gone_ids
    starts = json.loads((out / "manifest.parquet" / "_shards.json").read_text())["starts"]
    assert set(starts) & gone_ids, "no shard boundary is theirs: moving one would go unchecked"
    # A killed pass leaves its planned work rows in private/.work (pipeline.tables.work_spool): theirs too.
    spool = WorkSpool(layout)
    spool.add(0, [{"key": i, "image_id": i, "source": str(data / i), "levels": [0.5]} for i in [one, *bob]])
    assert (out / "private" / ".work").is_dir()

    listed = tmp_path / "withdrawn.txt"
    listed.write_text(f"{one}\nnot/in/this/run.jpg\n\n")
    status, stdout, err = cli("forget", str(out), "--ids", str(listed))
    assert status == 0, err
    assert stdout.startswith("Forgot 1 images") and "1 of the given ids" in stdout
    status, stdout, err = cli("forget", str(out), "--identity", PEOPLE[1])
    assert status == 0, err
    assert stdout.startswith(f"Forgot {len(bob)} images")

    assert not traces(out, needles, hashes)
    assert not (out / "private" / ".work").exists()
    record = json.loads((out / "run.json").read_text())
    assert [entry["count"] for entry in record["forgotten"]] == [1, len(bob)]
    assert all(set(entry) == {"date", "count"} for entry in record["forgotten"])
    # The others are all still there, each row once.
    assert set(pd.read_parquet(out / "private" / "identities.parquet")["anon_id"]) == kept
    assert set(pd.read_parquet(out / "manifest.parquet")["anon_id"]) == kept
    assert set(pd.read_parquet(out / "private" / "embeddings.parquet")["anon_id"]) == kept
    # Every shard keeps its kept images, and its marker says exactly what its file holds.
    shards = load_shards(layout)
    for shard, path in shard_files(layout.manifest).items():
        rows = pq.read_table(path)
        assert {shards.of(a) for a in rows.column("anon_id").to_pylist()} == {shard}
        assert read_marker(layout, shard) == shard_marker(rows, evaluated=True)

    # The operator removes them from the input too; the gate's rerun resumes exactly: nothing redone, and
    # nothing of theirs released.
    (data / one).unlink()
    shutil.rmtree(data / PEOPLE[1])
    status, _, err = cli(*argv)
    assert status == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["pairs_done_this_run"] == 0 and [e["count"] for e in record["forgotten"]] == [1, len(bob)]
    assert not traces(out, needles, hashes)
    assert not hashes & release_hashes(out)
    assert set(pd.read_parquet(out / "manifest.parquet")["anon_id"]) == kept


def test_forget_passes_over_empty_tables_and_files_that_do_not_name_them(tmp_path):
    layout = RunLayout(tmp_path)
    empty = pa.table({"anon_id": pa.array([], pa.string()), "reason": pa.array([], pa.string())})
    other = pa.table({"anon_id": ["b" * 24], "release_id": ["c" * 32], "level": [0.5]})
    # Declared places (the writers refuse any other).
    (tmp_path / "private").mkdir()
    empty_at, other_at = tmp_path / "private" / "withheld.parquet", tmp_path / "private" / "released.parquet"
    for path, table in ((empty_at, empty), (other_at, other)):
        pq.write_table(table, path)
        assert remove_rows_of(layout, path, {"a" * 24}) == 0
        assert pq.read_table(path).equals(table)
    assert remove_rows_of(layout, other_at, {"b" * 24}) == 1
    assert pq.read_table(other_at).num_rows == 0
