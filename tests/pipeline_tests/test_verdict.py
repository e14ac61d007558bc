"""The verdict comes first: at the gate's thresholds (the stricter of the run's and deepface's own), not at the
paper's 0.4, in the terminal's first closing line and at the top of the report's Summary."""

from __future__ import annotations

import html

import pandas as pd
import pytest
from markupsafe import escape
from samples import write_faces

pytestmark = pytest.mark.slow


def test_the_verdict_counts_images_at_the_gate_thresholds_not_the_papers():
    from evaluation.summary import image_verdicts, verdict_lines, verdict_table

    distances = pd.DataFrame(
        {
            "anon_id": ["a", "a", "b", "b", "c"],
            "level": [1.0] * 5,
            "recognizer": ["VGG-Face", "Facenet", "VGG-Face", "Facenet", "VGG-Face"],
            "status": ["ok"] * 5,
            "distance": [0.7, 0.5, 0.5, 0.5, 0.9],
        }
    )
    gate = {"VGG-Face": 0.68, "Facenet": 0.4}
    # a clears both; b clears 0.4 but not VGG-Face's 0.68; c was never seen by Facenet.
    table = verdict_table(image_verdicts(distances, gate))
    assert table[["n_images", "n_clear"]].values.tolist() == [[3, 1]]
    summary = pd.DataFrame({"level": [1.0], "recognizer": ["VGG-Face"], "reid_rank1": [0.33], "reid_chance1": [0.11]})
    (line,) = verdict_lines(table, gate, summary)
    assert line.startswith("Verdict at level 1, at the gate's thresholds (VGG-Face 0.68, Facenet 0.4): 1/3 images")
    assert "2 of 3 do NOT clear" in line and "re-identification rank-1 33% (chance 11%)" in line
    released = verdict_lines(table, gate, summary, released=(1, 12))
    assert released[0].startswith("Verdict: released 1 of 12 images (8%, 95% CI ")


def test_a_run_clearing_04_but_not_deepfaces_068_says_so_first(cli, tmp_path):
    """Random VGG-Face distances lie near 0.65: above the paper's 0.4, mostly at or below deepface's own 0.68."""
    from deepface.config.threshold import thresholds

    data, out = tmp_path / "in", tmp_path / "out"
    write_faces(data, 3, size=(64, 64))
    secret = tmp_path / "secret"  # fixed seeds: the same distances on every run of this machine
    secret.write_text(bytes(range(32)).hex() + "\n")

    argv = ["--levels", "0.5", "--recognizers", "VGG-Face", "--secret-file", str(secret)]
    status, stdout, _ = cli("run", str(data), "--out", str(out), *argv)

    assert status == 0
    distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
    own = thresholds["VGG-Face"]["cosine"]
    assert distances["distance"].between(0.4, own).any(), "no distance between 0.4 and 0.68: the check is vacuous"
    assert (distances["distance"] > 0.4).all()  # the paper's protocol clears every image ...
    k, n = int((distances["distance"] > own).sum()), len(distances)
    lines = stdout.strip().splitlines()
    # ... and the verdict, said first, counts at deepface's stricter 0.68: these do NOT clear.
    assert lines[0].startswith(f"Verdict at level 0.5, at the gate's thresholds (VGG-Face {own:g}): {k}/{n} images")
    assert f"{n - k} of {n} do NOT clear" in lines[0]
    assert any(line.startswith("At level 0.5, the paper's protocol (threshold 0.4): VGG-Face 100%") for line in lines)
    page = (out / "report" / "index.html").read_text()
    after = page[page.index("<h2>Summary</h2>") + len("<h2>Summary</h2>") :].lstrip()
    assert after.startswith(f'<p class="verdict"><strong>{escape(lines[0])}</strong></p>')
    assert "the paper's protocol (threshold 0.4)" in html.unescape(page)  # whichever way the template escapes "'"
    # The distance plot draws the gate's threshold too, not only 0.4.
    svg = (out / "report" / "distance_vs_level.svg").read_text()
    assert f"gate threshold VGG-Face ({own:g})" in svg
