"""The gate's policy (issue 22, findings 6, 7, 11a): what --gate refuses unless --gate-override names the rule,
that an override in effect opens both reports and run.json, and that public outputs never name a local --model
by its path."""

from __future__ import annotations

import html
import json
import re

import pytest
from samples import write_faces

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("flags", "rule"),
    [
        # Finding 7: no detector, so "an original with no face is withheld" cannot hold.
        (["--detector", "skip"], "detector-skip"),
        # Finding 7: hiding the face from the detector would count as clearing it.
        (["--detector", "opencv", "--no-face-anonymized", "whole_image"], "whole-image"),
        # Finding 6: best-of-K against the judge, and several variants of one face released.
        (["--detector", "opencv", "--samples", "2"], "samples"),
        # Finding 7: a gate threshold below deepface's own (Facenet's is 0.4) released behind a banner only.
        (["--detector", "opencv", "--gate-thresholds", "Facenet=0"], "thresholds"),
    ],
)
def test_the_gate_refuses_what_voids_its_guarantees_in_one_line_creating_nothing(tmp_path, capsys, flags, rule):
    from pipeline.cli import main

    data, out = tmp_path / "in", tmp_path / "runs" / "out"
    write_faces(data, 1)
    argv = ["run", str(data), "--out", str(out), "--gate", "--recognizers", "Facenet", *flags]

    status = main(argv)

    stderr = capsys.readouterr().err
    assert status == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert f"--gate-override {rule}" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was created


def test_the_gate_refuses_an_unknown_override_rule(tmp_path, capsys):
    from pipeline.cli import main

    data, out = tmp_path / "in", tmp_path / "out"
    write_faces(data, 1)

    status = main(["run", str(data), "--out", str(out), "--gate", "--detector", "opencv", "--gate-override", "all"])

    assert status == 2 and "unknown rule(s) all" in capsys.readouterr().err
    assert not out.exists()


def test_an_override_opens_both_reports_and_run_json(cli, tmp_path):
    """Findings 6/7: an override in effect is the first thing both reports and run.json say."""
    data, out = tmp_path / "in", tmp_path / "out"
    write_faces(data, 2, size=(64, 64))

    # The fixture adds --detector skip, and so the detector-skip rule to the override.
    status, _, stderr = cli(
        "run", str(data), "--out", str(out), "--gate", "--ladder", "0.5", "--steps", "4",
        "--gate-thresholds", "Facenet=0.1", "--gate-override", "thresholds",
    )  # fmt: skip

    assert status == 0, stderr
    for report in (out / "report" / "index.html", out / "release" / "report" / "index.html"):
        text = report.read_text()
        first = re.search(r'<div class="notice">([^<]*)</div>', text)
        assert first and text.index(first.group(0)) < text.index("<h2")
        assert first.group(1).startswith("GATE POLICY OVERRIDDEN (--gate-override detector-skip,thresholds)")
        notice = html.unescape(first.group(1))  # the template's escaping (&#39; or &#x27;) is not the point
        assert "--detector skip" in notice and "Facenet=0.1 (deepface's own 0.4)" in notice
    lines = (out / "run.json").read_text().splitlines()
    assert lines[1].startswith('  "_gate_override"')  # the first key of run.json
    record = json.loads("\n".join(lines))
    assert record["_gate_override"]["rules"] == ["detector-skip", "thresholds"]
    assert record["_gate_override"]["statement"].startswith("GATE POLICY OVERRIDDEN")


def test_no_public_file_names_a_local_model_by_its_path(cli, tmp_path, tiny_sd):
    """Finding 11a: run.json and the report name a local --model by what pins it (its weights' hash)."""
    data, out = tmp_path / "in", tmp_path / "out"
    write_faces(data, 1, size=(64, 64))

    status, _, stderr = cli("run", str(data), "--out", str(out), "--levels", "0.5", "--steps", "4")

    assert status == 0, stderr
    record = json.loads((out / "run.json").read_text())
    weights = record["model"]["weights_sha256"]
    assert record["model"]["model"] == record["settings"]["sampler"]["model"] == f"local model, sha256 {weights[:12]}"
    page = (out / "report" / "index.html").read_text()
    assert f"local model, sha256 {weights[:12]}" in page
    for path in [out / "run.json", *(out / "report").rglob("*")]:
        if path.is_file():
            assert str(tiny_sd).encode() not in path.read_bytes(), path
