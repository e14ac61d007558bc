"""The HTML report: content, self-containment, escaping, and a look in headless Chromium."""

from __future__ import annotations

import base64
import io
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
        sections=[("Release gate", "<p id='gate'>12 images released at level 0.6</p>")],
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
        "<p id='gate'>12 images released at level 0.6</p>",
        "CUDA out of memory &lt;tried 2 GiB&gt;",
        "0.68",  # deepface's VGG-Face default threshold
        "2622",  # the VGG-Face threshold history
        "Wilson",
        "at original&#x27;s box",  # the n_compared_at_original_box column, and its explanation
        "compared at the original's face box",
    ):
        assert expected in text, expected
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
