"""Face-region mode through the whole pipeline: anonymize only the faces of a photo, evaluate per face, gate.

Real parts: deepface's opencv detector on scenes made from scikit-image's astronaut photo, the tiny latent
model and random-weight Facenet of the session, a real Ray job through the command line; dlib's real,
pretrained detector and recognizer (deepface "Dlib") for the evaluation that must mean something.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from samples import FACE_SIZE, astronaut, scene, textured_background
from scans import leaks

from anonymize import RegionSettings, SamplerSettings
from pipeline.folder.layout import RunLayout
from pipeline.folder.secret import keyed_levels
from pipeline.tables.read import read_faces, read_manifest

pytestmark = pytest.mark.slow

REGION = ["--region", "faces", "--levels", "0.7"]


def write_scenes(folder):
    """two.png: two faces in a textured scene; one.png: one face; none.png: texture only. Returns the images."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {
        "two.png": scene(900, 600, FACE_SIZE, ((100, 250), (520, 30))),
        "one.png": scene(640, 480, FACE_SIZE, ((300, 120),), seed=1),
        "none.png": textured_background(500, 400, seed=2),
    }
    for name, image in images.items():
        image.save(folder / name)
    return images


def outputs_by_source(out) -> pd.DataFrame:
    layout = RunLayout.at(str(out))
    ids = pd.read_parquet(layout.identities)[["anon_id", "image_id"]]
    return read_manifest(layout).merge(ids, on="anon_id")


def test_region_mode_changes_the_faces_and_no_other_pixel(cli, tmp_path):
    images = write_scenes(tmp_path / "in")
    out = tmp_path / "out"
    status, stdout, stderr = cli("run", str(tmp_path / "in"), "--out", str(out), *REGION)
    assert status == 0, stderr
    layout = RunLayout.at(str(out))
    manifest = outputs_by_source(out).set_index("image_id")
    faces = read_faces(layout)
    assert faces.groupby("anon_id").size().to_dict() == {
        manifest.loc["two.png", "anon_id"]: 2,
        manifest.loc["one.png", "anon_id"]: 1,
    }
    assert manifest.loc[["two.png", "one.png"], "faces"].tolist() == [2, 1]

    for name in ("two.png", "one.png"):
        original = np.asarray(images[name].convert("RGB"))
        output = np.asarray(Image.open(out / manifest.loc[name, "output_path"]).convert("RGB"))
        assert output.shape == original.shape  # the input's size: no resize of the whole photo
        outside = np.ones(original.shape[:2], bool)
        mine = faces[faces["anon_id"] == manifest.loc[name, "anon_id"]]
        for face in mine.itertuples():
            outside[face.top : face.top + face.side, face.left : face.left + face.side] = False
            inside = (slice(face.y, face.y + face.h), slice(face.x, face.x + face.w))
            change = np.abs(output[inside].astype(int) - original[inside].astype(int)).mean()
            assert change > 10, f"{name} face {face.face} barely changed ({change:.1f})"
        assert np.array_equal(output[outside], original[outside]), f"{name}: a pixel outside the faces changed"
        # Every face has its own generator: the seeds differ and none is the image's.
        assert mine["seed"].nunique() == len(mine)
        # The faces' seeds stay in private/: nothing public lets a linker regenerate a face.
        assert leaks(out, [str(seed) for seed in mine["seed"]]) == []

    # A detector miss never publishes a face: no output, a status row saying why.
    none = manifest.loc["none.png"]
    assert none["status"] == "no_face_detected" and pd.isna(none["output_path"])
    assert none["error"].startswith("no_face_detected")
    assert not any((out / "images").rglob(f"{none['anon_id']}.png"))

    # One distances row per (image, level, face, recognizer); the no-face scene's rows say so.
    distances = pd.read_parquet(layout.distances)
    faced = distances[distances["face"].notna()]
    assert sorted(faced.groupby("anon_id")["face"].apply(sorted).tolist()) == [[0], [0, 1]]
    assert set(distances.loc[distances["anon_id"] == none["anon_id"], "status"]) == {"no_face_detected"}

    # The summary counts faces and images apart; an image is cleared when all its faces are.
    summary = pd.read_parquet(layout.summary).iloc[0]
    assert (summary["n_faces"], summary["n_images"], summary["n_evaluated"]) == (3, 3, 3)
    ok = faced[faced["status"] == "ok"]
    per_image = ok.groupby("anon_id")["distance"].apply(lambda d: bool((d > summary["threshold"]).all()))
    assert summary["n_cleared"] == int((ok["distance"] > summary["threshold"]).sum())
    assert summary["n_images_cleared"] == int(per_image.sum())

    # Face boxes locate people: kept in private/, never drawn in the internal report (docs/privacy.md).
    page = (layout.report / "index.html").read_text()
    assert 'stroke="#e8590c"' not in page

    # A rerun finds everything done: no Ray, no row added, the no-face image not retried.
    before = read_manifest(layout)
    status, _, stderr = cli("run", str(tmp_path / "in"), "--out", str(out), *REGION)
    assert status == 0, stderr
    pd.testing.assert_frame_equal(read_manifest(layout), before)


def test_the_gate_releases_an_image_only_when_every_face_cleared(cli, tmp_path):
    write_scenes(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["run", str(tmp_path / "in"), "--out", str(out), "--region", "faces", "--gate", "--ladder", "0.5,1.0"]
    # The release keeps every pixel outside the faces: the gate asks the user to accept that it links.
    status, _, stderr = cli(*argv)
    assert status == 2 and "--accept-scene-linkage" in stderr and len(stderr.strip().splitlines()) == 1
    status, _, stderr = cli(*argv, "--accept-scene-linkage", "--thresholds", "Facenet=0.55")
    assert status == 0, stderr
    layout = RunLayout.at(str(out))
    manifest = outputs_by_source(out)
    distances = pd.read_parquet(layout.distances)
    gate = json.loads(layout.run_json.read_text())["gate"]
    threshold = gate["thresholds"]["Facenet"]
    assert threshold == 0.55  # the stricter of 0.55 and deepface's own 0.40
    faced = distances[distances["face"].notna()]
    clears = faced.assign(ok=(faced["status"] == "ok") & (faced["distance"] > threshold))
    cleared_at = clears.groupby(["anon_id", "level"])["ok"].all()
    expected = {aid for (aid, _), ok in cleared_at.items() if ok}
    names = pd.read_parquet(layout.private / "released.parquet").set_index("release_id")["anon_id"]
    released = {names[p.stem] for p in (layout.release / "images").glob("*.png")}
    assert released == expected
    withheld = pd.read_parquet(layout.private / "withheld.parquet")
    none = manifest.loc[manifest["image_id"] == "none.png", "anon_id"].iloc[0]
    assert withheld.set_index("anon_id").loc[none, "reason"] == "no_face_detected"
    assert none not in released
    public = (layout.release / "report" / "index.html").read_text()
    assert "links each released image to its source" in public


def test_boomerang_evaluate_in_region_mode_with_dlibs_real_weights(cli, dlib_weights, tmp_path):
    """Hand-made outputs: a copy of the scene must not clear (dlib's distance below its own 0.07); the same
    scene with its faces painted over in flat grey must."""
    from anonymize import detect_faces, region_for

    originals, made = tmp_path / "originals", tmp_path / "made"
    originals.mkdir()
    made.mkdir()
    two = scene(900, 600, FACE_SIZE, ((100, 250), (520, 30)))
    two.save(originals / "copy.png")
    two.save(originals / "grey.png")
    two.save(made / "copy.png")
    grey = two.copy()
    boxes = detect_faces(two, "opencv")
    assert len(boxes) == 2
    for box in boxes:
        grey.paste((128, 128, 128), region_for(box, two.size).box)
    grey.save(made / "grey.png")

    out = tmp_path / "out"
    status, _, stderr = cli(
        "evaluate",
        "--originals",
        str(originals),
        "--anonymized",
        str(made),
        "--out",
        str(out),
        "--region",
        "faces",
        "--recognizers",
        "Dlib",
        "--detector",
        "opencv",
    )
    assert status == 0, stderr
    layout = RunLayout.at(str(out))
    ids = pd.read_parquet(layout.identities)[["anon_id", "image_id"]]
    distances = pd.read_parquet(layout.distances).merge(ids, on="anon_id")
    assert (distances["status"] == "ok").all() and distances.groupby("image_id").size().to_dict() == {
        "copy.png": 2,
        "grey.png": 2,
    }
    copy, painted = (distances[distances["image_id"] == name] for name in ("copy.png", "grey.png"))
    assert (copy["distance"] < 0.07).all() and not copy["cleared"].any()
    assert painted["cleared"].all()
    summary = pd.read_parquet(layout.summary).iloc[0]
    assert (summary["n_faces"], summary["n_images"], summary["n_images_cleared"]) == (4, 2, 1)


@pytest.fixture
def region_stage(tiny_sd, tmp_path):
    """The anonymize stage itself, in this process (no Ray), in face-region mode."""
    from pipeline.execution.anonymize_stage import AnonymizeConfig, AnonymizeStage

    def make(**region):
        settings = SamplerSettings(model=str(tiny_sd), steps=4, model_batch=4)
        config = AnonymizeConfig(str(tmp_path / "out"), 50_000_000, threads=1, region=RegionSettings("faces", **region))
        return AnonymizeStage(settings, config)

    return make


def batch_of(images: dict[str, Image.Image], tmp_path) -> pd.DataFrame:
    rows = []
    for name, image in images.items():
        path = tmp_path / name
        image.save(path)
        rows.append(
            {
                "image_id": name,
                "anon_id": f"a-{name}",
                "source": str(path),
                "source_size": path.stat().st_size,
                "source_mtime": 0.0,
                "problem": None,
                **keyed_levels(b"k" * 32, 0, name, [0.7]),
            }
        )
    return pd.DataFrame(rows)


def test_a_large_photo_keeps_its_size_and_is_never_resized_whole(region_stage, tmp_path, monkeypatch):
    import pipeline.execution.anonymize_stage

    def whole_image_resize(*args, **kwargs):
        raise AssertionError("region mode resized the whole photo to the model's size")

    monkeypatch.setattr(pipeline.execution.anonymize_stage, "to_model_input", whole_image_resize)
    stage = region_stage()
    big = scene(3000, 2000, FACE_SIZE, ((1200, 700),))
    rows = stage(batch_of({"big.png": big}, tmp_path))
    assert rows["status"].tolist() == ["ok"] and rows["faces"].tolist() == [1]
    assert Image.open(tmp_path / "out" / rows["output_path"].iloc[0]).size == (3000, 2000)


def test_twenty_faces_in_one_photo_cost_the_model_calls_of_twenty_photos_of_one(region_stage, tmp_path):
    face = astronaut(FACE_SIZE)
    crowd = textured_background(5 * 300, 4 * 300)
    for i in range(20):
        crowd.paste(face, (300 * (i % 5) + 10, 300 * (i // 5) + 10))
    singles = {f"single{i:02d}.png": scene(300, 300, FACE_SIZE, ((10, 10),), seed=i) for i in range(20)}

    stage = region_stage()
    calls = []
    stage.model.pipeline.unet.register_forward_hook(lambda *_: calls.append(1))
    crowd_rows = stage(batch_of({"crowd.png": crowd}, tmp_path))
    crowd_calls, calls[:] = len(calls), []
    single_rows = stage(batch_of(singles, tmp_path))
    assert crowd_rows["faces"].tolist() == [20] and single_rows["faces"].tolist() == [1] * 20
    assert crowd_calls == len(calls) > 0


def test_no_face_image_falls_back_to_whole_image_boomerang_on_request(region_stage, tmp_path):
    rows = region_stage(no_face="image")(batch_of({"none.png": textured_background(500, 400)}, tmp_path))
    assert rows["status"].tolist() == ["ok"] and rows["faces"].tolist() == [0]
    assert rows["face_boxes"].isna().all() and rows["seed"].notna().all()  # the whole image's own generator
    assert Image.open(tmp_path / "out" / rows["output_path"].iloc[0]).size == (500, 400)
