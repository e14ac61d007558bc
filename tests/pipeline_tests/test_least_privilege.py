"""Least privilege (issue 22, findings 8, 9, 11b, 11c): a run folder no other user can read, workers that never
hold the run's secret, no face boxes in the internal report, and a lost secret recovered with --secret-file."""

from __future__ import annotations

import json
import pickle
import stat

import pandas as pd
import pytest
from samples import FACE_SIZE, scene, write_faces

pytestmark = pytest.mark.slow


def test_the_run_folder_is_0700_and_nothing_in_it_is_readable_by_other_users(cli, tmp_path):
    """Finding 8: images/ holds every withheld output (still matched to its original) and the report
    --report-originals thumbnails; no file or folder of the run may be open to other users."""
    data, out = tmp_path / "in", tmp_path / "runs" / "out"
    write_faces(data, 2, size=(64, 64))

    status, _, stderr = cli(
        "run", str(data), "--out", str(out), "--levels", "0.5", "--steps", "4", "--report-originals"
    )

    assert status == 0, stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    paths = list(out.rglob("*"))
    assert any(p.suffix == ".png" for p in paths) and (out / "report" / "index.html").is_file()
    for path in paths:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert not mode & 0o007, f"{path.relative_to(out)} is open to other users ({mode:o})"
        assert not mode & 0o020, f"{path.relative_to(out)} is writable by its group ({mode:o})"
        if out / "private" in path.parents:
            assert mode == (0o700 if path.is_dir() else 0o600), f"{path.relative_to(out)} ({mode:o})"


def _job(tmp_path, tiny_sd, **values):
    from pipeline.execution.job import prepare
    from pipeline.settings.config import build_settings

    data = tmp_path / "in"
    write_faces(data, 2, size=(64, 64))
    settings = build_settings(
        {"input": str(data), "out": str(tmp_path / "out"), "model": str(tiny_sd), "levels": "0.3,0.6", **values}
    )
    return prepare(settings, "anonymize")


@pytest.mark.parametrize("values", [{"samples": 2}, {"region": "faces"}])
def test_the_anonymize_actors_and_their_rows_never_hold_the_secret(tmp_path, tiny_sd, values):
    """Finding 9: what job.py pickles to every anonymize actor (its constructor arguments) and every dataset row
    holds no byte of the secret; each whole-image output is seeded as before (anonymize.output_seed), so its
    bytes are unchanged for a fixed secret."""
    import ray.cloudpickle

    from anonymize import output_seed
    from pipeline.execution.anonymize_pass import anonymize_config, work_row

    job = _job(tmp_path, tiny_sd, **values)
    try:
        secret = job.secret
        rows = [work_row(job, item, job.anon_ids[item.image_id], job.settings.levels) for item in job.inputs.items]
        actor_args = (job.settings.sampler, anonymize_config(job, 1))
    finally:
        job.close()
    assert len(rows) == 4 if values.get("samples") else len(rows) == 2
    for blob in (ray.cloudpickle.dumps(rows), ray.cloudpickle.dumps(actor_args), pickle.dumps(rows)):
        for form in (secret, secret.hex().encode(), secret.hex().upper().encode()):
            assert form not in blob
    for row in rows:
        expected = [output_seed(secret, 0, row["image_id"], level, row["sample"]) for level in row["levels"]]
        assert row["seeds"] == expected
        assert len(set(row["subkeys"])) == len(row["levels"]) and secret.hex() not in row["subkeys"]


def test_faces_seeded_the_way_before_the_secret_left_the_workers_are_not_resumed():
    """Finding 9: faces and tiles are now seeded from a per-output sub-key; a region folder from before (no
    seed scheme recorded) is refused a resume rather than mixed. Whole-image folders resume as ever."""
    from anonymize import RegionSettings
    from pipeline.folder.provenance import RefusedRerun, check_rerun
    from pipeline.settings.config import JobSettings
    from pipeline.settings.fingerprint import VERSION, defaults, fingerprint

    def record(fp: dict) -> dict:
        return {"determines_outputs": fp, "determines_outputs_version": VERSION}

    model = {"commit": None, "weights_sha256": "ab" * 32, "model": "m"}
    region = JobSettings(out="x", region=RegionSettings("faces"))
    now = fingerprint(region, "anonymize", model)
    before = {k: v for k, v in now.items() if k != "seed_scheme"}
    with pytest.raises(RefusedRerun, match="seeding of faces and tiles"):
        check_rerun(record(before), now, has_outputs=True, defaults=defaults(region))
    check_rerun(record(now), now, has_outputs=True, defaults=defaults(region))
    whole_settings = JobSettings(out="x")
    whole = fingerprint(whole_settings, "anonymize", model)
    assert "seed_scheme" not in whole
    check_rerun(record(whole), whole, has_outputs=True, defaults=defaults(whole_settings))


def test_the_internal_report_draws_no_face_boxes(cli, tmp_path):
    """Finding 11b: face boxes locate people and stay in private/outputs.parquet (docs/privacy.md)."""
    from pipeline.folder.layout import RunLayout
    from pipeline.tables.read import read_faces

    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    scene(640, 480, FACE_SIZE, ((300, 120),), seed=1).save(data / "one.png")

    status, _, stderr = cli("run", str(data), "--out", str(out), "--region", "faces", "--levels", "0.5", "--steps", "4")

    assert status == 0, stderr
    faces = read_faces(RunLayout.at(str(out)))
    assert len(faces) == 1, "the check needs a detected face"
    page = (out / "report" / "index.html").read_text()
    for face in faces.itertuples():
        assert f'x="{face.left}" y="{face.top}" width="{face.side}"' not in page
        assert f'x="{face.x}" y="{face.y}"' not in page
    assert 'stroke="#e8590c"' not in page  # the overlay's colour


def test_a_lost_secret_is_recovered_with_secret_file_as_the_refusal_advises(cli, tmp_path):
    """Finding 11c: a folder with outputs whose private/secret is gone resumes with --secret-file of its backup;
    another secret is refused, in one line, before anything is written."""
    data, out = tmp_path / "in", tmp_path / "out"
    write_faces(data, 1, size=(64, 64))
    argv = ["anonymize", str(data), "--out", str(out), "--levels", "0.5", "--steps", "4"]
    status, _, stderr = cli(*argv)
    assert status == 0, stderr
    backup = tmp_path / "backup-secret"
    backup.write_bytes((out / "private" / "secret").read_bytes())
    (out / "private" / "secret").unlink()
    manifest = pd.read_parquet(out / "manifest.parquet")

    status, _, stderr = cli(*argv)
    assert status == 2 and "--secret-file" in stderr  # the advice
    other = tmp_path / "other-secret"
    other.write_text(bytes(range(32)).hex() + "\n")
    status, _, stderr = cli(*argv, "--secret-file", str(other))
    assert status == 2 and "not the secret of the run" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (out / "private" / "secret").exists()

    status, _, stderr = cli(*argv, "--secret-file", str(backup))

    assert status == 0, stderr
    assert (out / "private" / "secret").read_bytes() == backup.read_bytes()
    assert stat.S_IMODE((out / "private" / "secret").stat().st_mode) == 0o600
    assert json.loads((out / "run.json").read_text())["pairs_done_this_run"] == 0  # nothing redone
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"), manifest)
