"""Issue 24: one verdict first everywhere (terminal, both reports, summary.parquet, the dataset card), reports as
documents that describe exactly what they cover, the internal report's pictures, and a release that Hugging Face
`datasets` loads."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from browser import FIRST_SCREEN, verdict_bottom
from markupsafe import escape
from PIL import Image
from samples import write_faces
from scans import embedded_images, input_needles, leaks

PEOPLE = ("Jane_Doe", "John_Roe")
LADDER = "0.2,0.5,0.9"
# Near Facenet's random-weight median distance (about 0.55): some images clear at the first rung, some climb,
# some never clear. deepface's own Facenet threshold is 0.4, so the gate decides at the run's stricter 0.55.
RUN_THRESHOLD = 0.55


@pytest.fixture(scope="module")
def gate_run(ray_runtime, deepface_home, tiny_sd, tmp_path_factory):
    """One gate job (6 faces of 2 people, identities from folders so the attacks run), its stdout lines."""
    from pipeline.cli import main

    root = tmp_path_factory.mktemp("documents")
    data, out, secret = root / "Holiday_Jane_Doe", root / "out", root / "secret"
    ids = write_faces(data, 6, size=(72, 72), people=PEOPLE)
    secret.write_text(bytes(range(32)).hex() + "\n")  # fixed seeds: the same outcome on every run
    argv = ["run", str(data), "--out", str(out), "--gate", "--ladder", LADDER]
    argv += ["--thresholds", f"Facenet={RUN_THRESHOLD}"]
    argv += ["--recognizers", "Facenet", "--model", str(tiny_sd), "--steps", "10", "--detector", "skip"]
    argv += ["--gate-override", "detector-skip", "--deepface-home", str(deepface_home), "--identity-from", "folder"]
    argv += ["--secret-file", str(secret)]
    buffer = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    assert not (out / ".boomerang.lock").exists()  # a finished local run leaves no lock file
    release = pd.read_parquet(out / "release" / "manifest.parquet")
    assert 0 < len(release) < len(ids), "all or nothing released: the checks below would be vacuous"
    return SimpleNamespace(data=data, out=out, ids=ids, lines=buffer.getvalue().splitlines(), release=release)


def gate_verdicts(out: Path) -> pd.DataFrame:
    """Independently: per level, images whose Facenet distance is above the gate's threshold."""
    distances = pd.read_parquet(out / "evaluation" / "distances.parquet")
    distances = distances.assign(clears=(distances["status"] == "ok") & (distances["distance"] > RUN_THRESHOLD))
    return distances.groupby("level")["clears"].agg(n="size", k="sum")


@pytest.mark.heavy
def test_summary_parquet_carries_the_verdict_at_the_gate_thresholds(gate_run):
    from evaluation.summary import wilson_interval

    summary = pd.read_parquet(gate_run.out / "evaluation" / "summary.parquet")
    assert (summary["gate_threshold"] == RUN_THRESHOLD).all()  # max(run's 0.55, deepface's 0.4)
    expected = gate_verdicts(gate_run.out)
    for row in summary.itertuples():
        n, k = int(expected.loc[row.level, "n"]), int(expected.loc[row.level, "k"])
        assert (row.verdict_images, row.verdict_cleared) == (n, k)
        assert math.isclose(row.verdict_fraction, k / n)
        assert (row.verdict_ci_low, row.verdict_ci_high) == pytest.approx(wilson_interval(k, n))
    # The terminal's first line is the gate's verdict, attacks beside it.
    assert gate_run.lines[0].startswith(f"Verdict: released {len(gate_run.release)} of {len(gate_run.ids)} images")
    assert "Attacks: linkage rank-1" in gate_run.lines[0] and "re-identification rank-1" in gate_run.lines[0]


@pytest.mark.heavy
def test_both_reports_open_with_the_verdict_and_are_documents(gate_run):
    out, release = gate_run.out, gate_run.release
    internal = (out / "report" / "index.html").read_text()
    public = (out / "release" / "report" / "index.html").read_text()
    for page in (internal, public):
        after = page[page.index("<h2>Summary</h2>") + len("<h2>Summary</h2>") :].lstrip()
        assert after.startswith(f'<p class="verdict"><strong>{escape(gate_run.lines[0])}</strong></p>')
        for row in ("report made", "boomerang-anonymize", "keyed digest", "weights: diffusion model"):
            assert row in page, row
        assert 'weights: Facenet</th><td class="text wrap">sha256 ' in page
        assert re.search(r"report made</th><td[^>]*>\d{4}-\d\d-\d\dT", page)
    assert f'input fingerprint</th><td class="text wrap">{len(gate_run.ids)} images, keyed digest' in internal
    # The release report covers exactly the released set: its fingerprint and its summary's counts.
    assert f'release fingerprint</th><td class="text wrap">{len(release)} images, keyed digest' in public
    for level, n in release.groupby("level").size().items():
        assert f"level {level:g}: {n}/{n} cleared" in public
    # Settings are readable rows, not JSON; a gate run shows its ladder, not --levels.
    settings = public[public.index("<h2>Settings</h2>") :]
    assert "{" not in re.sub(r"<style>.*?</style>", "", settings, flags=re.S)
    assert ">ladder<" in settings and ">levels<" not in settings and ">sampler: steps<" in settings


@pytest.mark.heavy
def test_the_internal_report_shows_released_outputs_as_thumbnails_only(gate_run):
    out = gate_run.out
    page = (out / "report" / "index.html").read_text()
    shown = embedded_images(page)
    assert len(shown) == min(len(gate_run.release), 12)
    outputs = {p.read_bytes() for p in (out / "images").rglob("*.png")}
    for _, png in shown:
        assert png not in outputs  # never an output's own file ...
        with Image.open(io.BytesIO(png)) as image:
            assert max(image.size) <= 72 // 2  # ... nor at its resolution
    assert "withheld ones only with --report-withheld" in page
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", page)
    assert captions and all(c.endswith(" released") for c in captions)


def test_report_withheld_adds_the_sampled_withheld_outputs():
    from pipeline.outputs.internal_report import report_sample_rows

    chosen = pd.DataFrame({"anon_id": ["a", "b", "c"], "level": [0.2, 0.2, 0.5], "output_path": ["x", "y", "z"]})
    released = chosen.iloc[[1]].assign(sha256_output="0" * 64)
    job = SimpleNamespace(settings=SimpleNamespace(report_withheld=False))
    assert report_sample_rows(job, chosen, released)["anon_id"].tolist() == ["b"]
    job.settings.report_withheld = True
    assert report_sample_rows(job, chosen, released)["anon_id"].tolist() == ["a", "b", "c"]
    assert report_sample_rows(job, chosen, None) is chosen  # no gate: the sampled outputs


def test_an_evaluate_only_report_shows_the_evaluation_settings_not_boomerangs_sampler():
    from evaluation.report import setting_rows
    from pipeline.outputs.report_document import report_settings
    from pipeline.settings.config import JobSettings

    settings = JobSettings(input="in", out="out", label="blur8")
    rows = dict(setting_rows(report_settings(settings, "evaluate", settings.public_dict())))
    assert rows["evaluated tool"] == "blur8" and rows["label"] == "blur8"
    assert "evaluation: recognizers" in rows and "evaluation: threshold" in rows
    assert not any(key.startswith(("sampler", "region")) or key in ("ladder", "levels", "gate") for key in rows)
    assert not any(value.startswith(("{", "[")) for value in rows.values())  # readable, not JSON
    ran = dict(setting_rows(report_settings(settings, "run", settings.public_dict())))
    assert "sampler: steps" in ran and "levels" in ran and "ladder" not in ran  # no gate: no ladder


@pytest.mark.heavy
def test_the_release_loads_with_hugging_face_datasets(gate_run, tmp_path):
    datasets = pytest.importorskip("datasets", reason="pip install datasets (the test extra)")
    release_dir = gate_run.out / "release"
    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(release_dir), split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert loaded.num_rows == len(gate_run.release)
    assert sorted(loaded["release_id"]) == sorted(gate_run.release["release_id"])
    for row in loaded:
        on_disk = Image.open(release_dir / "images" / f"{row['release_id']}.png")
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(on_disk.convert("RGB")))
        level = gate_run.release.set_index("release_id").loc[row["release_id"], "level"]
        assert row["level"] == pytest.approx(level)


@pytest.mark.heavy
def test_the_dataset_card_says_what_a_user_needs_and_names_no_one(gate_run):
    out = gate_run.out
    card = (out / "release" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "other" and front["size_categories"] == ["n<1K"]
    assert f"**{gate_run.lines[0]}**" in card
    for heading in ("## How it was anonymized", "## Threshold policy", "## What this does not protect"):
        assert heading in card
    assert f"Facenet {RUN_THRESHOLD:g}" in card and "Face-region mode" in card
    assert f"release fingerprint: {len(gate_run.release)} images" in card
    # Nothing public names a person, a file, an input or a path (the card and metadata.csv included).
    assert not leaks(out, input_needles(gate_run.data, gate_run.ids))


@pytest.mark.heavy
@pytest.mark.browser
def test_the_first_screen_of_both_reports_shows_the_verdict(gate_run, tmp_path):
    out = gate_run.out
    for page in (out / "report" / "index.html", out / "release" / "report" / "index.html"):
        assert verdict_bottom(page, tmp_path) <= FIRST_SCREEN[1], page


def digests(page: str) -> list[str]:
    return re.findall(r"fingerprint</th><td[^>]*>([^<]*)</td>", page)


@pytest.mark.heavy
def test_a_rebuilt_report_fingerprints_the_same_sets(gate_run):
    """`boomerang report` (no input, no secret given) rebuilds both reports and the card with the same digests."""
    from pipeline.cli import main

    out = gate_run.out
    pages = [out / "report" / "index.html", out / "release" / "report" / "index.html"]
    before = [digests(p.read_text()) for p in pages]
    assert all(len(d) == 1 for d in before)
    assert main(["report", str(out)]) == 0
    assert [digests(p.read_text()) for p in pages] == before
    assert before[1][0] in (out / "release" / "README.md").read_text()
    assert not (out / ".boomerang.lock").exists()
