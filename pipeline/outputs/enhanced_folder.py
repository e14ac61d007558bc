"""`boomerang enhance`: `enhanced/` holds every ok output under its input's own name (docs/enhance.md).

Enhancement is not anonymization: the user's own photos, upscaled, have nothing to hide from their owner,
so after each pass `enhanced/` is rebuilt from the manifest with each output as a hard link (a copy where
links are not possible) at its input's relative path with `.png` (`trips/2019/beach.jpg` ->
`enhanced/trips/2019/beach.png`), as `boomerang evaluate` pairs files; with several levels under
`level=L/`, with several samples as `beach.sample1.png`. A name two inputs would share (`a.jpg`, `a.png`)
keeps its input's extension (`a.jpg.png`); an id that is not a plain relative path (a Parquet id with `..`)
gets the output's keyed name. `images/` keeps the keyed names every job has, so resume, the manifest and
`forget` work as for any job (`forget` rebuilds this folder). The folder carries input names by design: it is
the user's own data, like INPUT, and not for publication (docs/privacy.md).
"""

from __future__ import annotations

from pathlib import PurePosixPath

import pandas as pd

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout, level_dirname
from pipeline.outputs.training_set import link_or_copy
from pipeline.tables.read import read_manifest


def enhanced_names(outputs: pd.DataFrame) -> dict[tuple[str, float], str]:
    """(anon_id, level) -> the path under enhanced/, for rows with columns anon_id, level, sample, image_id."""
    several_levels = outputs["level"].nunique() > 1
    several_samples = outputs["sample"].fillna(0).max() > 0
    names: dict[tuple[str, float], str] = {}
    taken: set[str] = set()
    for row in outputs.sort_values(["level", "image_id", "sample"]).itertuples():
        sample = f".sample{int(row.sample)}" if several_samples else ""
        folder = PurePosixPath(level_dirname(row.level)) if several_levels else PurePosixPath()
        relative = _plain_relative(str(row.image_id))
        if relative is None:
            candidates = [f"{row.anon_id}{sample}.png"]
        else:
            candidates = [relative.with_name(relative.stem + sample + ".png").as_posix()]
            candidates.append(relative.with_name(relative.name + sample + ".png").as_posix())
        candidates.append(f"{row.anon_id}{sample}.png")
        name = next((folder / c).as_posix() for c in candidates if (folder / c).as_posix() not in taken)
        taken.add(name)
        names[(row.anon_id, float(row.level))] = name
    return names


def _plain_relative(image_id: str) -> PurePosixPath | None:
    """The input id as a relative path inside enhanced/, or None where it is not one."""
    path = PurePosixPath(image_id)
    bad = ("", ".", "..")
    if path.is_absolute() or any(p in bad for p in path.parts) or "\\" in image_id or "\x00" in image_id:
        return None
    return path if path.parts else None


def build_enhanced(layout: RunLayout) -> dict:
    """Rebuild enhanced/ from the manifest's ok rows and private/identities.parquet; returns counts for run.json."""
    manifest = read_manifest(layout, columns=["anon_id", "level", "status", "output_path"])
    ok = manifest[manifest["status"] == "ok"]
    storage.remove_tree(layout.enhanced)
    storage.make_dirs(layout.enhanced)
    if not len(ok) or not layout.identities.is_file():
        return {"images": 0, "folder": "enhanced"}
    known = storage.read_table(layout.identities).to_pandas()
    if "sample" not in known:  # written before --samples: every output was sample 0
        known = known.assign(sample=0)
    known = known[["anon_id", "image_id", "sample"]]
    rows = ok.merge(known, on="anon_id", how="inner")
    names = enhanced_names(rows)
    for row in rows.itertuples():
        target = layout.enhanced / names[(row.anon_id, float(row.level))]
        storage.make_dirs(target.parent)
        link_or_copy(layout.root / row.output_path, target)
    return {"images": len(names), "folder": "enhanced"}
