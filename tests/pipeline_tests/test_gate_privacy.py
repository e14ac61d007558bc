"""The release gate and privacy hygiene, checked against distances.parquet and every byte written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from jobs import kill_job_when
from PIL import ExifTags, Image, ImageCms
from samples import write_faces

pytestmark = pytest.mark.slow

PEOPLE = ("Jane_Doe", "John_Roe")
LADDER = (0.2, 0.5, 0.9)
# Near the random recognizers' median distances, so some images clear low and some climb.
THRESHOLDS = "Facenet=0.6,VGG-Face=0.65"


def write_faces_with_metadata(folder: Path, n: int) -> list[str]:
    """Face photos named after people, carrying EXIF GPS, a description, a comment and an ICC profile."""
    ids = write_faces(folder, n, size=(72, 72), people=PEOPLE)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for rel in ids:
        image = Image.open(folder / rel)
        image.load()
        exif = Image.Exif()
        exif[ExifTags.Base.ImageDescription] = f"{rel} taken at home"
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        gps[ExifTags.GPS.GPSLatitudeRef] = "N"
        gps[ExifTags.GPS.GPSLatitude] = (52.0, 22.0, 1.0)
        image.save(folder / rel, exif=exif, comment=rel.encode(), icc_profile=icc)
        assert Image.open(folder / rel).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    return ids


def expected_release(distances: pd.DataFrame, recognizers: list[str]) -> dict[str, float]:
    """Independently: each image's lowest ladder level at which every recognizer's distance > threshold."""
    lowest: dict[str, float] = {}
    for (anon_id, level), group in distances.groupby(["anon_id", "level"]):
        ok = group[group["status"] == "ok"]
        if set(ok["recognizer"]) == set(recognizers) and (ok["distance"] > ok["threshold"]).all():
            lowest[anon_id] = min(level, lowest.get(anon_id, 2.0))
    return lowest


def gate_argv(
    data: Path, out: Path, thresholds: tuple[str, ...] = ("--thresholds", THRESHOLDS), ladder=LADDER
) -> list[str]:
    return [
        "run",
        str(data),
        "--out",
        str(out),
        "--gate",
        "--ladder",
        ",".join(map(str, ladder)),
        *thresholds,
        "--recognizers",
        "Facenet,VGG-Face",
    ]


@pytest.fixture(scope="module")
def gate_run(ray_runtime, deepface_home, tiny_sd, tmp_path_factory):
    """One gate job over faces named after people and carrying metadata, shared by the checks below."""
    from pipeline.cli import main

    root = tmp_path_factory.mktemp("gate")
    data, out = root / "in", root / "out"
    ids = write_faces_with_metadata(data, 6)
    argv = [
        *gate_argv(data, out),
        "--model",
        str(tiny_sd),
        "--steps",
        "10",
        "--detector",
        "skip",
        "--deepface-home",
        str(deepface_home),
    ]
    assert main(argv) == 0
    return data, out, ids


def test_gate_releases_each_image_at_its_lowest_clearing_level(gate_run):
    data, out, ids = gate_run
    distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
    manifest = pd.read_parquet(out / "manifest.parquet")
    expected = expected_release(distances, ["Facenet", "VGG-Face"])
    release = pd.read_parquet(out / "release" / "manifest.parquet")
    assert dict(zip(release["anon_id"], release["level"], strict=True)) == expected
    # An image went up a level only if the level below did not clear it.
    for anon_id, rows in manifest.groupby("anon_id"):
        tried = sorted(rows["level"])
        assert tried == list(LADDER[: len(tried)])
        if anon_id in expected:
            assert tried[-1] == expected[anon_id]
        else:
            assert tried == list(LADDER)
    assert sorted(p.name for p in (out / "release" / "images").iterdir()) == sorted(f"{a}.png" for a in expected)
    withheld = pd.read_parquet(out / "private" / "withheld.parquet")
    assert set(withheld["anon_id"]) == set(manifest["anon_id"]) - set(expected)
    assert len(expected) + len(withheld) == len(ids)
    assert manifest["level"].nunique() > 1  # the ladder was climbed, not trivially cleared at the bottom
    report = (out / "release" / "report" / "index.html").read_text()
    assert "Release gate" in report and "model evaluations" in report


def test_no_metadata_and_no_names_in_release_or_report(gate_run):
    data, out, ids = gate_run

    needles = [p.encode() for p in PEOPLE] + [p.split("_")[0].encode() for p in PEOPLE]
    needles += [str(data).encode(), b"_0001", b"taken at home"]
    checked = 0
    for folder in (out / "release", out / "report"):
        for path in folder.rglob("*"):
            if path.is_file():
                blob = path.read_bytes()
                assert not [n for n in needles if n in blob], path
                checked += 1
    assert checked >= 3
    assert b"ORIGINAL" not in (out / "report" / "index.html").read_bytes()  # not without --report-originals
    for path in list((out / "images").rglob("*.png")) + list((out / "release").rglob("*.png")):
        image = Image.open(path)
        assert not image.getexif() and "icc_profile" not in image.info and not image.text, path
        assert not any(name in path.name for name in PEOPLE)
    # The link back to identities exists, in private/ only.
    identities = pd.read_parquet(out / "private" / "identities.parquet")
    assert set(identities["image_id"]) == set(ids)


def test_gate_killed_between_rounds_resumes_without_redoing_rounds(cli, tmp_path, tiny_sd, deepface_home):
    data = tmp_path / "in"
    write_faces(data, 4, size=(64, 64))
    out = tmp_path / "out"
    ladder = LADDER[:2]
    argv = [
        *gate_argv(data, out, thresholds=(), ladder=ladder),
        "--batch-size",
        "1",
        "--eval-batch-size",
        "1",
        "--threshold",
        "1.5",
        "--recognizers",
        "Facenet",
    ]
    options = ["--model", str(tiny_sd), "--steps", "10", "--detector", "skip", "--deepface-home", str(deepface_home)]
    manifest = out / "manifest.parquet"

    def second_round_started() -> bool:
        parts = list(manifest.glob("part-*.parquet")) if manifest.is_dir() else []
        return bool(parts) and bool((pd.read_parquet(manifest)["level"] > ladder[0]).any())

    kill_job_when([*argv, *options], second_round_started)
    first_round = {
        p: p.stat().st_mtime_ns
        for p in manifest.glob("part-*.parquet")
        if (pd.read_parquet(p)["level"] == ladder[0]).all()
    }
    assert len(pd.read_parquet(manifest).query("level == @ladder[0]")) == 4

    status, _, _ = cli(*argv)

    assert status == 0
    rows = pd.read_parquet(manifest)
    # Threshold 1.5 is never exceeded: every image climbs the whole ladder, each level exactly once.
    assert len(rows) == 4 * len(ladder) and rows.groupby(["anon_id", "level"]).size().eq(1).all()
    assert {p: p.stat().st_mtime_ns for p in first_round} == first_round
