"""The paper's other two applications on the same job machinery: data augmentation (`--samples K`,
`boomerang augment`) and perceptual resolution enhancement (`boomerang enhance`, its PSNR/SSIM benchmark).

Real parts: the session's tiny latent model and random-weight Facenet, a real Ray job through the command
line, scikit-image for the independent recomputation of the benchmark.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from samples import astronaut, astronaut_variants

from anonymize import SamplerSettings
from pipeline.folder.layout import RunLayout
from pipeline.tables.read import read_manifest

pytestmark = pytest.mark.slow

SAMPLES = ["--samples", "3", "--levels", "0.5"]


def write_classes(folder) -> dict[str, str]:
    """cats/tabby.jpg and dogs/beagle.jpg: class folders, and file names an output must not carry."""
    tabby, beagle = astronaut_variants(2, (64, 64))
    for rel, image in (("cats/tabby.jpg", tabby), ("dogs/beagle.jpg", beagle)):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / rel, quality=95)
    return {"cats/tabby.jpg": "cats", "dogs/beagle.jpg": "dogs"}


def outputs(out) -> pd.DataFrame:
    layout = RunLayout.at(str(out))
    ids = pd.read_parquet(layout.identities)[["anon_id", "image_id", "sample"]]
    manifest = read_manifest(layout).drop(columns="sample").merge(ids, on="anon_id")
    manifest["bytes"] = [hashlib.sha256((out / p).read_bytes()).hexdigest() for p in manifest["output_path"]]
    return manifest.sort_values(["image_id", "level", "sample"], ignore_index=True)


def test_samples_and_augment(cli, tiny_sd, tmp_path):
    classes = write_classes(tmp_path / "in")
    run = tmp_path / "run"
    status, _, stderr = cli("run", str(tmp_path / "in"), "--out", str(run), *SAMPLES, "--batch-size", "4")
    assert status == 0, stderr

    # One row per (image, level, sample); three distinct outputs per image, each with its own name.
    done = outputs(run)
    assert done.groupby(["image_id", "level"])["sample"].apply(sorted).tolist() == [[0, 1, 2], [0, 1, 2]]
    assert (done["status"] == "ok").all() and done["bytes"].nunique() == 6 and done["anon_id"].nunique() == 6
    summary = pd.read_parquet(RunLayout.at(str(run)).summary).iloc[0]
    assert summary["diversity_images"] == 2 and 0 < summary["diversity_mean"] < 2
    page = (run / "report" / "index.html").read_text()  # the section's table, laid out by the template
    assert "<h2>Local samples: diversity</h2>" in page and '<th class="">mean distance between samples</th>' in page

    # A rerun does nothing.
    before = read_manifest(RunLayout.at(str(run)))
    assert cli("run", str(tmp_path / "in"), "--out", str(run), *SAMPLES)[0] == 0
    pd.testing.assert_frame_equal(read_manifest(RunLayout.at(str(run))), before)

    # `augment` is the same job without evaluation: with the run's secret and another batch size, the same
    # bytes for every (image, level, sample), laid out in the inputs' class folders.
    aug = tmp_path / "aug"
    secret = str(run / "private" / "secret")
    argv = ["augment", str(tmp_path / "in"), "--out", str(aug), *SAMPLES, "--batch-size", "1", "--secret-file", secret]
    status, stdout, stderr = cli(*argv)
    assert status == 0, stderr
    assert outputs(aug)[["image_id", "level", "sample", "bytes"]].equals(done[["image_id", "level", "sample", "bytes"]])
    assert not any((aug / "evaluation" / "distances.parquet").glob("*.parquet"))  # evaluation off
    train = aug / "train"
    labels = pd.read_parquet(train / "labels.parquet")
    # A class is shown by its keyed pseudonym (in a face dataset, the folder is a person's name); the owner
    # finds its name in private/classes.parquet.
    names = pd.read_parquet(aug / "private" / "classes.parquet").set_index("class")["label"].to_dict()
    assert sorted(names.values()) == ["cats", "dogs"] and all(c.startswith("class-") for c in names)
    assert sorted(labels["label"].map(names)) == ["cats"] * 3 + ["dogs"] * 3
    files = sorted(p.relative_to(train).as_posix() for p in train.rglob("*.png"))
    assert files == sorted(labels["path"])
    by_anon = outputs(aug).set_index("anon_id")
    for path in files:
        label, name = path.split("/")
        anon = name.removesuffix(".png")
        assert classes[by_anon.loc[anon, "image_id"]] == names[label]  # each output in its input's class
        assert not any(word in name for word in ("tabby", "beagle", ".jpg"))  # nothing of the source name
        assert hashlib.sha256((train / path).read_bytes()).hexdigest() == by_anon.loc[anon, "bytes"]


def test_one_sample_is_reproducible_alone(tiny_sd, tmp_path):
    """Sample 2 of an image, made alone in this process by the stage, is the job's sample 2 byte for byte:
    a sample depends on its own key only (same model files, one torch thread, fixed model batch)."""
    from pipeline.execution.anonymize_stage import AnonymizeConfig, AnonymizeStage
    from pipeline.folder.secret import anon_id, keyed_levels, output_key

    secret = b"s" * 32
    image = astronaut(64)
    image.save(tmp_path / "face.png")
    stage = AnonymizeStage(
        SamplerSettings(model=str(tiny_sd), steps=10, model_batch=4),
        AnonymizeConfig(str(tmp_path / "out"), 50_000_000, threads=1),
    )

    def row(sample: int) -> dict:
        return {
            "image_id": "face.png",
            "sample": sample,
            "anon_id": anon_id(secret, output_key("face.png", sample)),
            "source": str(tmp_path / "face.png"),
            "source_size": 1,
            "source_mtime": 0.0,
            "problem": None,
            **keyed_levels(secret, 0, "face.png", [0.5], sample),
        }

    together = stage(pd.DataFrame([row(0), row(1), row(2)]))
    alone = stage(pd.DataFrame([row(2)]))
    assert together["sha256_output"].nunique() == 3
    assert alone["sha256_output"].iloc[0] == together["sha256_output"].iloc[2]
    assert anon_id(secret, output_key("face.png", 0)) == anon_id(secret, "face.png")  # one sample: names as ever


def test_enhance_gives_exactly_scale_times_the_size_in_blended_tiles(cli, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    astronaut(50).crop((0, 0, 37, 50)).save(folder / "small.png")  # 37x50 -> 148x200: tiles of 64 px
    secret = tmp_path / "secret"
    secret.write_text(bytes(range(32)).hex() + "\n")  # one output, the same on every run
    out = tmp_path / "out"
    argv = ["enhance", str(folder), "--out", str(out), "--scale", "4", "--levels", "0.2", "--secret-file", str(secret)]
    status, stdout, stderr = cli(*argv)
    assert status == 0, stderr
    row = read_manifest(RunLayout.at(str(out))).iloc[0]
    output = np.asarray(Image.open(out / row["output_path"]).convert("RGB")).astype(int)
    assert output.shape == (200, 148, 3)
    # The user's own photo keeps its name, and the last line says where it is (issue 24, item 6).
    assert (out / "enhanced" / "small.png").read_bytes() == (out / row["output_path"]).read_bytes()
    assert f"Enhanced images: {out / 'enhanced'} (1 image, named as in the input)." in stdout
    ids = tmp_path / "ids.txt"
    ids.write_text("small.png\n")
    status, _, stderr = cli("forget", str(out), "--ids", str(ids))  # withdrawn: its named copy goes too
    assert status == 0 and not (out / "enhanced" / "small.png").exists(), stderr
    assert (out / "enhanced").is_dir()

    # No visible step where tiles meet. The random-weight model draws noise, so single columns vary: the steps
    # between neighbouring pixels across every tile edge, on average, are within the spread of the steps
    # inside the tiles (their mean plus two standard deviations, per column and per row).
    from anonymize import tile_grid

    tiles = tile_grid((148, 200), 64, 16)
    assert len(tiles) > 1
    for axis, length, start, side in ((1, 148, "left", "side"), (0, 200, "top", "side")):
        steps = np.abs(np.diff(output, axis=axis)).mean(axis=(1 - axis, 2))  # step between line i and i + 1
        edges = {getattr(t, start) + getattr(t, side) - 1 for t in tiles if getattr(t, start) + t.side < length}
        edges |= {getattr(t, start) - 1 for t in tiles if getattr(t, start)}
        inside = np.delete(steps, sorted(edges))
        assert steps[sorted(edges)].mean() <= inside.mean() + 2 * inside.std()


def test_the_enhancement_benchmark_equals_an_independent_recomputation(cli, tmp_path):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    folder = tmp_path / "in"
    folder.mkdir()
    astronaut(90).save(folder / "face.png")
    out = tmp_path / "out"
    argv = ["enhance", str(folder), "--out", str(out), "--scale", "3", "--levels", "0.2,0.3", "--benchmark"]
    status, _, stderr = cli(*argv)
    assert status == 0, stderr
    quality = pd.read_parquet(out / "evaluation" / "quality.parquet")
    manifest = read_manifest(RunLayout.at(str(out))).set_index("level")

    original = np.asarray(Image.open(folder / "face.png").convert("RGB"))  # 90x90: a multiple of 3
    low = Image.fromarray(original).resize((30, 30), Image.Resampling.BICUBIC)
    candidates = {
        ("boomerang", level): Image.open(out / manifest.loc[level, "output_path"]) for level in (0.2, 0.3)
    } | {
        ("lanczos", None): low.resize((90, 90), Image.Resampling.LANCZOS),
        ("bicubic", None): low.resize((90, 90), Image.Resampling.BICUBIC),
    }
    assert len(quality) == len(candidates) == 4
    for row in quality.itertuples():
        level = None if pd.isna(row.level) else row.level
        test = np.asarray(candidates[(row.method, level)].convert("RGB"))
        assert test.shape == original.shape
        assert row.psnr == pytest.approx(peak_signal_noise_ratio(original, test, data_range=255), rel=1e-12)
        expected = structural_similarity(original, test, channel_axis=-1, data_range=255)
        assert row.ssim == pytest.approx(expected, rel=1e-12)
    page = (out / "report" / "index.html").read_text()
    assert "Enhancement benchmark" in page and "random-weight" in page
    for level in (0.2, 0.3):  # several levels: one folder each, the input's name in both
        enhanced = out / "enhanced" / f"level={level:.2f}" / "face.png"
        assert enhanced.read_bytes() == (out / manifest.loc[level, "output_path"]).read_bytes()

    # The original spoiled since: a rerun (nothing to redo) measures what it can and says what it left out.
    (folder / "face.png").write_bytes(b"not an image any more")
    status, _, stderr = cli(*argv)
    assert status == 0, stderr
    assert not (pd.read_parquet(out / "evaluation" / "quality.parquet")["method"] == "boomerang").any()
    assert "1 images are not measured" in (out / "report" / "index.html").read_text()
