"""The attacker's view in a job: the linkage attack over the run's private embeddings."""

from __future__ import annotations

import stat

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image
from samples import write_faces
from scans import leaks, public_files

from evaluation.distances import cosine_distance


def copies_of(originals, ids, folder):
    """Another tool's "anonymized" folder that holds exact copies of the originals, as PNG."""
    for rel in ids:
        target = folder / rel.replace(".jpg", ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(originals / rel).save(target)


def test_outputs_that_are_copies_of_their_originals_are_all_linked_at_rank_1(cli, tmp_path):
    originals, theirs, out = tmp_path / "orig", tmp_path / "theirs", tmp_path / "out"
    ids = write_faces(originals, 4, size=(64, 64))
    copies_of(originals, ids, theirs)

    argv = ["evaluate", "--originals", str(originals), "--anonymized", str(theirs), "--out", str(out)]
    status, stdout, err = cli(*argv, "--label", "copies")

    assert status == 0, err
    attacks = pd.read_parquet(out / "private" / "attacks.parquet")
    distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
    ok = distances[distances["status"] == "ok"]
    # One row per (output, recognizer, attack), and every copy is found first among all originals.
    assert len(attacks) == len(ok) == len(ids) * distances["recognizer"].nunique()
    assert set(attacks["attack"]) == {"linkage"} and (attacks["rank"] == 1).all()
    assert (attacks["gallery_size"] == len(ids)).all()
    summary = pd.read_parquet(out / "evaluation" / "summary.parquet")
    assert (summary["linkage_rank1"] == 1.0).all() and (summary["linkage_chance1"] == 1 / len(ids)).all()
    page = (out / "report" / "index.html").read_text()
    assert "view: linkage and re-identification" in page
    # Issue 24, items 7 and 8: the headline names the attack that beats chance; the report describes the run
    # that happened (the evaluated tool's label, no Boomerang sampler) and plots the output by its label.
    assert "linkage rank-1 100% (chance 25%) ABOVE CHANCE" in stdout.splitlines()[0]
    assert "ABOVE CHANCE" in page[: page.index("<h2>Distance")]
    settings = page[page.index("<h2>Settings</h2>") :]
    assert ">evaluated tool<" in settings and "sampler" not in settings and ">ladder<" not in settings
    for plot in ("distance_vs_level.svg", "fraction_cleared_vs_level.svg"):
        svg = (out / "report" / plot).read_text()
        assert "copies" in svg and svg.count("<use ") >= 1, plot


def test_linkage_ranks_equal_a_brute_force_recomputation_and_no_embedding_leaves_private(cli, tmp_path, tiny_sd):
    data, out = tmp_path / "in", tmp_path / "out"
    write_faces(data, 5, size=(64, 64))

    status, _, err = cli("run", str(data), "--out", str(out), "--levels", "0.3,0.8", "--steps", "4")

    assert status == 0, err
    embeddings = pd.read_parquet(out / "private" / "embeddings.parquet")
    attacks = pd.read_parquet(out / "private" / "attacks.parquet")
    assert len(attacks) == len(embeddings) > 0
    # Independently: every distance from each output to every original, counted without sorting.
    for row in attacks.itertuples():
        mine = embeddings[(embeddings["recognizer"] == row.recognizer)]
        gallery = mine.drop_duplicates("anon_id").set_index("anon_id")["original"]
        query = mine[(mine["anon_id"] == row.anon_id) & (mine["level"] == row.level)]["anonymized"].item()
        d = {aid: cosine_distance(query, np.asarray(g)) for aid, g in gallery.items()}
        assert row.rank == 1 + sum(v < d[row.anon_id] for v in d.values())
        assert row.gallery_size == len(gallery)
    # Biometric data stays in private/: 0600 files, and no table outside private/ holds a vector.
    for part in (out / "private" / "embeddings.parquet").iterdir():
        assert stat.S_IMODE(part.stat().st_mode) == 0o600
    for table in out.rglob("*.parquet"):
        if table.is_file() and "private" not in table.relative_to(out).parts:
            schema = pq.read_schema(table)
            assert not any(str(field.type).startswith(("list", "large_list")) for field in schema), table
    # A capped attack (10^6-image runs) attacks the smallest anon_ids of each level, against every original.
    from pipeline.folder.layout import RunLayout
    from pipeline.outputs.linkage_attack import linkage_attack

    capped = linkage_attack(RunLayout.at(str(out)), max_queries=2)
    assert (capped.groupby(["level", "recognizer"]).size() == 2).all()
    first_two = attacks.sort_values("anon_id").groupby(["level", "recognizer"]).head(2)
    pd.testing.assert_frame_equal(
        capped.sort_values(["level", "recognizer", "anon_id"], ignore_index=True),
        first_two.sort_values(["level", "recognizer", "anon_id"], ignore_index=True),
    )


def test_reidentification_ranks_equal_a_brute_force_recomputation(cli, tmp_path):
    """An LFW-style tree of 3 people with 2-3 photos and one person with a single photo."""
    originals, theirs, out = tmp_path / "orig", tmp_path / "theirs", tmp_path / "out"
    people = ("Ann_Able", "Bob_Baker", "Cy_Cole", "Solo_Sole")
    ids = write_faces(originals, 8, size=(64, 64), people=people)
    (originals / ids[7]).unlink()  # Solo_Sole had photos 4 and 8: now one
    ids = ids[:7]
    copies_of(originals, ids, theirs)

    status, _, err = cli(
        "evaluate", "--originals", str(originals), "--anonymized", str(theirs), "--out", str(out),
        "--identity-from", "folder",
    )  # fmt: skip

    assert status == 0, err
    attacks = pd.read_parquet(out / "private" / "attacks.parquet")
    reid = attacks[attacks["attack"] == "reid"]
    embeddings = pd.read_parquet(out / "private" / "embeddings.parquet")
    who = pd.read_parquet(out / "private" / "identities.parquet").set_index("anon_id")["identity"]
    assert sorted(who) == sorted(i.split("/")[0] for i in ids)
    assert len(reid) == len(ids) * embeddings["recognizer"].nunique()
    for row in reid.itertuples():
        mine = embeddings[embeddings["recognizer"] == row.recognizer].drop_duplicates("anon_id")
        query = mine.loc[mine["anon_id"] == row.anon_id, "anonymized"].item()
        others = mine[mine["anon_id"] != row.anon_id]  # the source photo itself is not in the gallery
        gallery = zip(others["anon_id"], others["original"], strict=True)
        d = {a: cosine_distance(query, np.asarray(g)) for a, g in gallery}
        same = [d[a] for a in d if who[a] == who[row.anon_id]]
        if not same:
            assert pd.isna(row.rank) and who[row.anon_id] == "Solo_Sole"
            continue
        assert row.rank == 1 + sum(v < min(same) for v in d.values())
    summary = pd.read_parquet(out / "evaluation" / "summary.parquet")
    assert (summary["reid_not_attackable"] == 1).all() and (summary["reid_queries"] == len(ids) - 1).all()
    assert (summary["reid_people_attackable"] == 3).all() and (summary["reid_people_single"] == 1).all()
    # Who is in the images, and how many photos each has, never leaves private/: the attack rows are private
    # (a per-output chance is that person's photo count; a null rank marks a one-photo person), and what is
    # public is one row per (level, recognizer) of aggregates.
    assert leaks(out, list(people)) == []
    assert not (out / "evaluation" / "attacks.parquet").exists()
    for path in public_files(out):
        if path.suffix == ".parquet":
            assert not {"rank", "chance_1", "hit_1", "hit_5"} & set(pq.read_schema(path).names), path
    assert not summary.duplicated(["level", "recognizer"]).any() and len(summary) == summary["recognizer"].nunique()


def test_the_gate_withholds_outputs_the_linkage_attack_finds(cli, tmp_path):
    """--gate-max-linkage 1: released exactly the outputs no recognizer ranks nearest to their own original."""
    data, out = tmp_path / "in", tmp_path / "out"
    write_faces(data, 6, size=(64, 64))
    secret = tmp_path / "secret"  # fixed seeds: the same ranks on every run of this machine
    secret.write_text(bytes(range(32)).hex() + "\n")

    status, stdout, err = cli(
        "run", str(data), "--out", str(out), "--gate", "--ladder", "0.5", "--steps", "4", "--secret-file", str(secret),
        "--gate-thresholds", "Facenet=0", "--gate-override", "thresholds", "--gate-max-linkage", "1",
    )  # fmt: skip

    assert status == 0, err
    attacks = pd.read_parquet(out / "private" / "attacks.parquet")
    nearest = set(attacks.loc[attacks["rank"] <= 1, "anon_id"])
    names = pd.read_parquet(out / "private" / "released.parquet").set_index("release_id")["anon_id"]
    released = {names[p.stem] for p in (out / "release" / "images").iterdir()}
    assert nearest and released, "both kinds are needed for the check to say anything"
    assert released == set(attacks["anon_id"]) - nearest
    withheld = pd.read_parquet(out / "private" / "withheld.parquet")
    assert set(withheld["anon_id"]) == nearest and withheld["reason"].str.contains("gate-max-linkage").all()
    assert "nearest 1 of all originals" in (out / "report" / "index.html").read_text()
