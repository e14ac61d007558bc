"""The insider's scan (docs/privacy.md, attacker 3) over folders made by every command: every byte and every
Parquet cell outside private/.

The corpus is named as people's photos are: person folders with spaces and non-ASCII letters, LFW-style file
names, a root folder named after a family, and bad files whose OS and decoder errors would quote their paths.
After each command, nothing outside private/ may hold any component (3+ characters) of any input path, any
input id, any seed, any face box or the run's secret, and every public table's columns must be declared
public (pipeline.tables.schemas).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageFilter
from samples import FACE_SIZE, scene, textured_background, write_faces
from scans import (
    input_needles,
    leaks,
    original_pieces,
    private_needles,
    raw_leaks,
    ray_log_sizes,
    ray_logs_since,
    terminal_leaks,
    undeclared_columns,
)

pytestmark = pytest.mark.slow

PEOPLE = ("Xanthippe Quarles", "Zoë Müllerová")
LEVEL = ["--levels", "0.5", "--steps", "4"]


def write_bad_files(folder: Path, person: str) -> list[str]:
    """Under a person's folder: a truncated JPEG, and a folder named like a photo (reading it: IsADirectoryError
    with the path, spaces and all, in its message)."""
    (folder / person).mkdir(parents=True, exist_ok=True)
    (folder / person / f"{person} 0098.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "Ölsenhaus Ablage").mkdir(exist_ok=True)
    os.symlink(folder / "Ölsenhaus Ablage", folder / person / f"{person}_0099.jpg")
    return [f"{person}/{person} 0098.jpg", f"{person}/{person}_0099.jpg", "Ölsenhaus Ablage"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    """Four face photos of two people (LFW-style names, spaces, non-ASCII) and two bad files."""
    root = tmp_path_factory.mktemp("surface") / "Śmiths Fotoalbum"
    ids = write_faces(root, 4, size=(64, 64), people=PEOPLE)
    return root, ids + write_bad_files(root, PEOPLE[0])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, list[str]]:
    """Face-region mode's inputs: a scene with one face and one with none, in person folders."""
    root = tmp_path_factory.mktemp("surface") / "Śmiths Urlaub"
    ids = [f"{PEOPLE[0]}/{PEOPLE[0]}_0001.png", f"{PEOPLE[1]}/{PEOPLE[1]} 0002.png"]
    for rel in ids:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
    scene(640, 480, FACE_SIZE, ((300, 120),), seed=1).save(root / ids[0])
    textured_background(500, 400, seed=2).save(root / ids[1])
    return root, ids


def assert_nothing_public_leads_back(
    out: Path,
    *inputs: tuple[Path, list[str]],
    terminal: str = "",
    logs: dict | None = None,
    own: tuple[str, ...] = (),
) -> None:
    """Nothing outside private/, nothing the command printed (`terminal`: its stdout and stderr) and nothing
    Ray's logs gained since `logs` (`ray_log_sizes()` before the command) holds an input's path, name or id, a
    seed, a face box or the secret. `own`: top folders that are the user's own data by design (enhance's
    enhanced/), left out of the file scan."""
    needles = [n for root, ids in inputs for n in input_needles(root, ids)]
    texts, raw = private_needles(out)
    assert leaks(out, needles + texts, own) == []
    assert raw_leaks(out, raw, own) == []
    assert undeclared_columns(out) == []
    # Printed text holds no original either (a value a log printed, as b'...' escapes).
    printed = needles + texts + [p for root, ids in inputs for p in original_pieces(root, ids)]
    assert terminal_leaks(terminal, printed) == []
    if logs is not None:
        assert terminal_leaks(ray_logs_since(logs), printed) == []


def test_evaluate_publishes_no_path_of_the_other_tool(cli, corpus, tmp_path):
    """Issue 22, finding 2: `boomerang evaluate` on another tool's LFW-style output folder."""
    originals, ids = corpus
    theirs = tmp_path / "Ølsenwerk Ausgabe"
    faces = [rel for rel in ids if rel.endswith("_0001.jpg") or rel.endswith("_0002.jpg") or rel.endswith("_0003.jpg")]
    for rel in faces:
        target = theirs / rel.replace(".jpg", ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(originals / rel).filter(ImageFilter.GaussianBlur(3)).save(target)
    out = tmp_path / "out"

    logs = ray_log_sizes()
    status, said, err = cli("evaluate", "--originals", str(originals), "--anonymized", str(theirs), "--out", str(out))

    assert status == 0, err
    manifest = pd.read_parquet(out / "manifest.parquet")
    ok = manifest[manifest["status"] == "ok"]
    assert len(ok) == len(faces) and manifest["output_path"].isna().all()
    # The path stays where paths belong: private/.
    kept = pd.read_parquet(out / "private" / "outputs.parquet")["output_source"].dropna()
    assert sorted(kept) == sorted(str(theirs / rel.replace(".jpg", ".png")) for rel in faces)
    theirs_ids = [rel.replace(".jpg", ".png") for rel in faces]
    assert_nothing_public_leads_back(out, corpus, (theirs, theirs_ids), terminal=said + err, logs=logs)


# One case per command, each a sequence of commands on one folder, scanned after each. `run --gate` leads,
# then `report` and `forget` on its folder (a plain run's folder holds a subset of what a gated one holds).
CASES = {
    "run --gate, then report, then forget": [
        ["run", "{data}", "--gate", "--ladder", "0.5,0.9", "--steps", "4"],
        ["report", "{out}"],
        ["forget", "{out}", "--ids", "{ids}"],
    ],
    "anonymize": [["anonymize", "{data}", *LEVEL]],
    # Level 0.5: at enhance's default 0.2, 4 steps leave no reverse step and every image is refused (and the
    # benchmark's tables, which read the originals, would never be written and scanned).
    "enhance --benchmark": [["enhance", "{data}", "--scale", "2", "--benchmark", *LEVEL]],
    "augment": [["augment", "{data}", "--samples", "2", *LEVEL]],
}


@pytest.mark.heavy
@pytest.mark.parametrize(
    "case",
    list(CASES),
)
def test_no_public_byte_of_a_command_leads_back_to_a_person(cli, corpus, tmp_path, case):
    data, _ = corpus
    out = tmp_path / "out"
    ids = tmp_path / "withdrawn.txt"  # forget: one person's first photo, by its id (the path under the input)
    first = sorted(p for p in data.rglob("*") if p.is_file())[0]
    ids.write_text(first.relative_to(data).as_posix() + "\n", encoding="utf-8")
    for argv in CASES[case]:
        args = [a.format(data=data, out=out, ids=ids) for a in argv]
        if args[0] not in ("report", "forget"):
            args += ["--out", str(out)]
        logs = ray_log_sizes()
        status, printed, err = cli(*args)
        assert status == 0, err
        # A folder in which nothing was made would pass any scan: each command made outputs.
        assert (pd.read_parquet(out / "manifest.parquet")["status"] == "ok").any(), args
        seen = {"terminal": printed + err, "logs": logs}
        if args[0] == "enhance":
            # The user's photos, upscaled, under their own names (docs/privacy.md): enhanced/ is theirs, as INPUT
            # is, and nothing else carries a name; every other command makes no such folder.
            ok = pd.read_parquet(out / "manifest.parquet").query("status == 'ok'")
            named = sorted(p.relative_to(out / "enhanced").as_posix() for p in (out / "enhanced").rglob("*.png"))
            assert len(named) == len(ok) > 0
            assert all(Path(rel).with_suffix(".png").as_posix() in named for rel in _ok_ids(out))
            assert_nothing_public_leads_back(out, corpus, own=("enhanced",), **seen)
            assert leaks(out, input_needles(*corpus)) != []  # the scan sees the names there: left out on purpose
        else:
            assert not (out / "enhanced").exists()
            assert_nothing_public_leads_back(out, corpus, **seen)


def _ok_ids(out: Path) -> list[str]:
    """The input ids of the ok outputs (private/identities.parquet joined to the manifest)."""
    ids = pd.read_parquet(out / "private" / "identities.parquet")
    ok = pd.read_parquet(out / "manifest.parquet").query("status == 'ok'")
    return sorted(ids[ids["anon_id"].isin(ok["anon_id"])]["image_id"])


@pytest.mark.heavy
def test_no_public_byte_of_a_face_region_gate_leads_back_to_a_person(cli, scenes, tmp_path):
    data, _ = scenes
    out = tmp_path / "out"
    logs = ray_log_sizes()
    status, printed, err = cli(
        "run", str(data), "--out", str(out), "--region", "faces", "--gate", "--accept-scene-linkage",
        "--ladder", "0.5", "--steps", "4",
    )  # fmt: skip
    assert status == 0, err
    assert (out / "release" / "manifest.parquet").is_file()
    assert_nothing_public_leads_back(out, scenes, terminal=printed + err, logs=logs)
