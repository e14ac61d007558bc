"""The HTML report: content, self-containment, escaping, and a look in headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from evaluation import EvaluationSettings, summarize, write_report
from evaluation.report import DISTANCE_PLOT, FRACTION_PLOT
from evaluation.report_blocks import Text, rows_table, section

CHROMIUM = Path("/usr/bin/chromium")
SETTINGS = EvaluationSettings(thresholds=(("Facenet", 0.35),))


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for level in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        for recognizer in SETTINGS.recognizers:
            for i in range(40):
                status = "ok" if i < 36 else ("no_face_original" if i < 38 else "error")
                rows.append(
                    {
                        "level": level,
                        "recognizer": recognizer,
                        "distance": float(np.clip(rng.normal(level * 0.6, 0.1), 0, 2)) if status == "ok" else None,
                        "status": status,
                        "face_anonymized": bool(rng.random() < 0.9) if status == "ok" else None,
                        "compared_at": None if status != "ok" else str(rng.choice(["detected", "original_box"])),
                    }
                )
    return summarize(pd.DataFrame(rows), SETTINGS)


@pytest.fixture(scope="module")
def report(tmp_path_factory, summary, face_variants) -> Path:
    failures = pd.DataFrame(
        {
            "anon_id": ["3f2a9c", "77b0e1"],
            "level": [0.7, 0.9],
            "stage": ["anonymize", "evaluate"],
            "error": ["CUDA out of memory <tried 2 GiB>", "anonymized: ValueError: image must be RGB uint8"],
        }
    )
    samples = [(f"{name} level 0.7 <b>", png_bytes(image)) for name, image in list(face_variants.items())[:5]]
    return write_report(
        tmp_path_factory.mktemp("report") / "report",
        title="Boomerang report <script>alert(1)</script> & co",
        settings={"levels": [0.5, 0.6, 0.7], "model": "stable-diffusion-v1-5", "evaluation": {"detector": "opencv"}},
        versions={"deepface": "0.0.103", "torch": "2.13.0"},
        summary=summary,
        failures=failures,
        samples=samples,
        notice="DEMO: random-weight models, these numbers are not meaningful",
        sections=[
            section(
                "Release gate",
                Text("12 images released at level 0.6 <i>"),
                rows_table(["lowest clearing level", "images <released>"], [(0.6, 12), (0.7, 0)]),
            )
        ],
    )


def test_report_holds_every_part(report, summary):
    text = report.read_text(encoding="utf-8")
    assert report.name == "index.html"
    for expected in (
        "DEMO: random-weight models, these numbers are not meaningful",
        "VGG-Face",
        "Facenet",
        "stable-diffusion-v1-5",
        "0.0.103",
        "Release gate",
        "<p>12 images released at level 0.6 &lt;i&gt;</p>",  # a section is plain data, escaped by the template
        '<th class="">images &lt;released&gt;</th>',
        '<tr><td class="">0.6</td><td class="">12</td></tr>',
        "CUDA out of memory &lt;tried 2 GiB&gt;",
        "0.68",  # deepface's VGG-Face default threshold
        "2622",  # the VGG-Face threshold history
        "Wilson",
    ):
        assert expected in text, expected
    # The n_compared_at_original_box column, and its explanation (whichever way the template escapes "'").
    assert "at original's box" in html.unescape(text) and "compared at the original's face box" in html.unescape(text)
    # The summary table shows every (level, recognizer) row with its counts.
    assert text.count("<tr>") >= len(summary) + 1
    assert f"{summary['n_cleared'].iloc[0]}/{summary['n_evaluated'].iloc[0]} cleared" in text


def test_report_is_self_contained_and_escaped(report):
    text = report.read_text(encoding="utf-8")
    assert not re.search(r"(https?|file)://", text)
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 5  # the five samples; the two plots are inline SVG, not pictures
    assert text.count("<svg") == 2
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    for src in sources:
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text
    assert "level 0.7 &lt;b&gt;" in text


def test_plots_are_saved_next_to_the_page(report):
    from xml.etree import ElementTree

    for name in (DISTANCE_PLOT, FRACTION_PLOT):
        root = ElementTree.parse(report.parent / name).getroot()
        assert root.tag.endswith("svg") and float(root.get("width").removesuffix("pt")) >= 400


def test_an_empty_run_still_renders(tmp_path):
    empty = summarize(pd.DataFrame(columns=["level", "recognizer", "distance", "status", "face_anonymized"]), SETTINGS)
    page = write_report(
        tmp_path,
        title="empty",
        settings={},
        versions={},
        summary=empty,
        failures=pd.DataFrame(),
        samples=[],
    )
    text = page.read_text(encoding="utf-8")
    assert "No evaluated images" in text and "None." in text
    assert (tmp_path / DISTANCE_PLOT).is_file()


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install chromium)")
    screenshot = tmp_path / "report.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={screenshot}",
        "--window-size=1280,2000",
        report.as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    keep = Path(__import__("os").environ.get("EVALUATION_SCREENSHOT", ""))
    if keep.name:
        shutil.copy(screenshot, keep)
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 20, "the screenshot is blank"
    # Plots and images are drawn: a good share of the page is not background white.
    assert (pixels < 200).mean() > 0.05


def test_a_run_without_levels_is_plotted_by_label_never_an_empty_box(tmp_path):
    """Another tool's output has no level: both plots put its label on the x axis and draw its points."""
    rng = np.random.default_rng(3)
    rows = [
        {"level": float("nan"), "recognizer": r, "distance": float(d), "status": "ok", "face_anonymized": True}
        for r in SETTINGS.recognizers
        for d in rng.uniform(0.2, 0.8, 12)
    ]
    summary = summarize(pd.DataFrame(rows), SETTINGS, label="blur8")
    page = write_report(
        tmp_path, title="t", settings={}, versions={}, summary=summary, failures=pd.DataFrame(), samples=[]
    )
    for name in (DISTANCE_PLOT, FRACTION_PLOT):
        svg = (page.parent / name).read_text()
        assert "blur8" in svg and "no evaluated images" not in svg
        # Markers were drawn: matplotlib writes each errorbar marker as a <use> of one symbol.
        assert svg.count("<use ") >= len(SETTINGS.recognizers), name
    assert "by label" in page.read_text()
    # Every threshold the plot mentions is drawn: the run's (Facenet 0.35, VGG-Face 0.4) and the gate's 0.68.
    gated = write_report(
        tmp_path / "g",
        title="t",
        settings={},
        versions={},
        summary=summary,
        failures=pd.DataFrame(),
        samples=[],
        gate_thresholds={"VGG-Face": 0.68, "Facenet": 0.4},
    )
    svg = (gated.parent / DISTANCE_PLOT).read_text()
    for label in ("threshold Facenet", "threshold VGG-Face", "gate threshold VGG-Face (0.68)"):
        assert label in svg, label
    for label in ("gate threshold Facenet (0.4)",):
        assert label in svg, label


def test_settings_are_readable_rows_not_json():
    from evaluation.report import setting_rows

    rows = dict(
        setting_rows(
            {"levels": [0.5, 0.7], "gate": True, "evaluation": {"thresholds": [["Facenet", 0.35]], "detector": None}}
        )
    )
    assert rows == {
        "levels": "0.5, 0.7",
        "gate": "yes",
        "evaluation: thresholds": "Facenet 0.35",
        "evaluation: detector": "–",
    }


def test_the_headline_says_when_an_attack_beats_chance():
    """Item 8: a blur whose outputs a re-identifier ranks first far above chance is not 'all clear'."""
    from evaluation.summary import verdict_lines

    table = pd.DataFrame({"level": [math.nan], "n_images": [15], "n_clear": [15], "ci_low": [0.8], "ci_high": [1.0]})
    summary = pd.DataFrame(
        {
            "level": [float("nan")],
            "recognizer": ["Dlib"],
            "reid_rank1": [0.33],
            "reid_rank1_ci_low": [0.2],
            "reid_chance1": [0.11],
        }
    )
    (line,) = verdict_lines(table, {"Dlib": 0.07}, summary)
    assert "15/15 images clear every recognizer" in line
    assert "re-identification rank-1 33% (chance 11%) ABOVE CHANCE: outputs are re-identified" in line
    within = summary.assign(reid_rank1_ci_low=[0.05])
    assert "ABOVE CHANCE" not in verdict_lines(table, {"Dlib": 0.07}, within)[0]


@pytest.mark.browser
def test_the_reports_first_screen_shows_the_verdict(summary, tmp_path):
    from browser import FIRST_SCREEN, verdict_bottom

    page = write_report(
        tmp_path / "report",
        title="Boomerang anonymization report",
        settings={},
        versions={},
        summary=summary,
        failures=pd.DataFrame(),
        samples=[],
        notice="DEMO: random-weight models, these numbers are not meaningful",
        verdict=["Verdict: released 1 of 12 images (8%, 95% CI 1%–35%), each clearing every recognizer."],
    )
    assert verdict_bottom(page, tmp_path) <= FIRST_SCREEN[1]


def test_no_table_or_paragraph_is_html_assembled_in_python():
    """Issue 24: the pages are the templates' (evaluation/templates), laid out from plain data
    (evaluation.report_blocks); no string in pipeline/ or evaluation/ holds table, list or paragraph markup."""
    import ast

    root = Path(__file__).resolve().parents[2]
    markup = re.compile(r"<(table|thead|tbody|tr|td|th|p|ul|ol|li|h\d)[\s>/]")
    found = []
    for path in sorted([*root.glob("pipeline/**/*.py"), *root.glob("evaluation/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and markup.search(node.value):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert found == []
