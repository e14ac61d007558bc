"""release/ as a dataset others can load: `metadata.csv` beside `images/` (Hugging Face `datasets` loads the folder
with `load_dataset("imagefolder", data_dir="release")`), a dataset card (`README.md` with YAML front matter), and
the numbers of the release report computed over exactly the released images.

Nothing here names an input: the card says how many images, how they were anonymized, the verdict and the
threshold policy; the metadata names images by their release names only.
"""

from __future__ import annotations

import csv
import io

import pandas as pd
import pyarrow.compute as pc

from evaluation.summary import merge_partials, partial_stats, summary_from_partials
from pipeline.folder import storage
from pipeline.tables.read import table_files

METADATA = "metadata.csv"
CARD = "README.md"
# What the release report's numbers read of each distance row.
_READS = ("anon_id", "level", "face", "recognizer", "distance", "status", "face_anonymized", "compared_at")


def released_summary(job, released: pd.DataFrame, label: str | None = None) -> pd.DataFrame:
    """The summary (evaluation.summary) of exactly the released images, each at its released level: what the
    release report describes, not the run's every image at every level."""
    settings = job.settings.evaluation
    pairs = set(zip(released["anon_id"], released["level"].astype(float), strict=True))
    ids = list({a for a, _ in pairs})
    parts = []
    for part in table_files(job.layout.distances):
        file = storage.parquet_file(part)
        columns = [c for c in _READS if c in file.schema_arrow.names]
        table = file.read(columns=columns)
        table = table.filter(pc.is_in(table["anon_id"], value_set=_strings(ids)))
        if not len(table):
            continue
        frame = table.to_pandas()
        keep = [(a, float(lv)) in pairs for a, lv in zip(frame["anon_id"], frame["level"], strict=True)]
        frame = frame[keep]
        if len(frame):
            parts.append(partial_stats(frame, settings))
    return summary_from_partials(merge_partials(*parts), settings, label)


def _strings(values):
    import pyarrow as pa

    return pa.array(values, pa.string())


def metadata_csv(rows: list[dict]) -> str:
    """`metadata.csv` of the released rows (release manifest rows): `file_name` relative to release/, the
    release name and level (what `datasets`' imagefolder joins to each image)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file_name", "release_id", "level", "t_boom"])
    for row in rows:
        writer.writerow([row["output_path"], row["release_id"], f"{row['level']:g}", row["t_boom"]])
    return buffer.getvalue()


def size_category(n: int) -> str:
    """Hugging Face's size_categories value for `n` rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def dataset_card(
    *,
    n_images: int,
    verdict: list[str],
    thresholds: dict[str, float],
    ladder: list[float],
    model: str,
    steps: int,
    region_faces: bool,
    max_linkage: int | None,
    notice: str | None,
    document: dict[str, str],
) -> str:
    """The dataset card (README.md): YAML front matter (license placeholder, size), then how it was anonymized,
    the verdict, the threshold policy and what it does not protect."""
    policy = ", ".join(f"{name} {value:g}" for name, value in thresholds.items())
    region = _what_is_resampled(region_faces)
    lines = _front_matter(n_images)
    if notice:
        lines += [f"**{notice}**", ""]
    lines += ["## Verdict", ""]
    lines += [f"**{line}**" for line in verdict] or ["No verdict: nothing was evaluated."]
    lines += [
        "",
        "## Contents",
        "",
        f"{n_images} PNG images in `images/`, named by a keyed hash (no input name, path or id travels). "
        "`metadata.csv` gives each image's release name and anonymity level; `manifest.parquet` adds its "
        "SHA-256. Load it with:",
        "",
        "```python",
        "from datasets import load_dataset",
        'release = load_dataset("imagefolder", data_dir="release", split="train")',
        "```",
        "",
        "## How it was anonymized",
        "",
        "Boomerang (Luzi et al., TMLR 2024): each image was noised part-way and denoised again by a diffusion "
        f"model ({model}, {steps} steps), starting at the lowest level of the ladder "
        f"{', '.join(f'{v:g}' for v in ladder)} and raised only while a face recognizer still matched it to its "
        "original.",
        "",
        "## Threshold policy",
        "",
        f"An image is released only when every recognizer finds a cosine distance above its gate threshold ({policy}): "
        "the stricter of the run's threshold and deepface's own for that model, so no released image is one "
        "`DeepFace.verify` calls the same person as its original"
        + (
            f", and no recognizer ranked its own original within the nearest {max_linkage} of all originals"
            if max_linkage
            else ""
        )
        + ". Images that never cleared, and originals with no face found, were withheld and are not here.",
        "",
        "## What this does not protect",
        "",
        region,
        "",
        "A recognizer's distance is not a guarantee: other recognizers, or an attacker with other photos of the "
        "same people, may still link images to people. Image sizes are kept; an image whose size no other "
        "input has can be matched by size alone.",
        "",
        "## Provenance",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in document.items()]
    return "\n".join(lines) + "\n"


def _front_matter(n_images: int) -> list[str]:
    """The card's YAML front matter (license placeholder, size) and title."""
    return [
        "---",
        "# Placeholder: choose the license under which these images may be shared before publishing them.",
        "license: other",
        "license_name: to-be-decided",
        "pretty_name: Boomerang-anonymized face images",
        "size_categories:",
        f"- {size_category(n_images)}",
        "tags:",
        "- anonymization",
        "- boomerang",
        "---",
        "",
        "# Boomerang-anonymized images",
        "",
    ]


def _what_is_resampled(region_faces: bool) -> str:
    """What the card says the mode resampled, and so what it does not protect."""
    return (
        "Face-region mode: ONLY THE FACES were resampled. Every other pixel is the original's, so anyone who "
        "holds the original photos links each image to its source by its background; clothing, places, "
        "text and other people in the scene are kept as they were. This release protects who is in the "
        "photos (the faces), not which photo each one is."
        if region_faces
        else "Whole-image mode: every pixel was resampled. Face-region mode (--region faces) would protect "
        "the faces only: its backgrounds, clothing and scenes stay the originals' and link each image to "
        "its source."
    )


def write_dataset_files(job, folder, verdict: list[str], document: dict[str, str], thresholds: dict) -> None:
    """metadata.csv and the dataset card into the staged release `folder` (its manifest.parquet written)."""
    from pipeline.folder.provenance import read_json
    from pipeline.settings.config import public_model

    rows = storage.read_table(folder / "manifest.parquet").to_pylist()
    storage.write_text(folder / METADATA, metadata_csv(rows))
    settings = job.settings
    weights = (read_json(job.layout.run_json).get("model") or {}).get("weights_sha256")
    card = dataset_card(
        n_images=len(rows),
        verdict=verdict,
        thresholds=thresholds,
        ladder=[float(v) for v in settings.ladder],
        model=public_model(settings.sampler.model, weights),
        steps=settings.sampler.steps,
        region_faces=settings.region.faces,
        max_linkage=settings.gate_max_linkage,
        notice=job.notice,
        document=document,
    )
    storage.write_text(folder / CARD, card)
