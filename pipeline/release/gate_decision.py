"""The release gate's decision: which images are released, at which level, and why the others are withheld.

Read a step of shards at a time (pipeline.tables.read.table_steps: every row of an image is in one step) with
bounded state: each step's released rows and withheld ids go to a scratch table in private/ (removed once the
release is built), and the driver keeps counts (per level, per reason), the cost, and the size counts of
pipeline.release.image_sizes. The release (pipeline.release.gate) reads the steps' tables back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa

from evaluation import DISTANCES_SCHEMA
from evaluation.summary import image_verdicts
from pipeline.execution.job import Job
from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.folder.storage import Location
from pipeline.outputs.linkage_attack import linkable
from pipeline.release.image_sizes import SizeCounts
from pipeline.settings.gate_policy import gate_thresholds
from pipeline.tables.read import read_shard, shards_with_rows, table_steps
from pipeline.tables.write import write_scratch_table

NO_FACE = "no face found in the original"
NEVER_CLEARED = "no level on the ladder cleared every recognizer"
LINKABLE = "its own original stayed among the nearest originals (--gate-max-linkage)"


def cleared_levels(distances: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """Per (anon_id, level): cleared = the verdict's rule (evaluation.summary.image_verdicts: every recognizer
    evaluated it, every face of it in face-region mode, and found distance > its gate threshold); and whether
    the original had no face."""
    columns = ["anon_id", "level", "cleared", "no_face_original"]
    if distances.empty:
        return pd.DataFrame(columns=columns)
    # Face-region mode has a row per face: an image clears only when every face clears every recognizer.
    keys = ["anon_id", "level", "recognizer"] + (["face"] if "face" in distances else [])
    d = distances[distances["recognizer"].isin(list(thresholds))].drop_duplicates(keys)
    verdicts = image_verdicts(d.dropna(subset=["level"]), thresholds).rename(columns={"clears": "cleared"})
    no_face = d.assign(no_face_original=d["status"] == "no_face_original").groupby(["anon_id", "level"])
    merged = verdicts.merge(no_face["no_face_original"].any().reset_index(), on=["anon_id", "level"], how="left")
    return merged[columns]


def without_linkable(status: pd.DataFrame, too_close: set) -> pd.DataFrame:
    """`cleared_levels` rows, no longer cleared where the linkage rule (--gate-max-linkage) holds them back."""
    if not too_close or status.empty:
        return status
    pairs = zip(status["anon_id"].tolist(), status["level"].astype(float).tolist(), strict=True)
    close = np.fromiter((pair in too_close for pair in pairs), dtype=bool, count=len(status))
    return status.assign(cleared=status["cleared"].to_numpy(dtype=bool) & ~close)


def settled_in(job: Job, shard: int, levels: list[float], thresholds: dict[str, float], too_close: set) -> set[str]:
    """The anon_ids of `shard` that the gate settled at one of `levels` (its lower rungs), from the shard's rows:
    cleared, or with no face in the original (no level will ever find one to compare), or not readable (a
    file that cannot be read at one level cannot at any). The rest go on to the next rung."""
    if not levels:
        return set()
    manifest = read_shard(job.layout.manifest, shard, ["anon_id", "level", "status"])
    if manifest is None:
        return set()
    settled = set(manifest.loc[(manifest["status"] != "ok") & manifest["level"].isin(levels), "anon_id"])
    distances = read_shard(job.layout.distances, shard, GATE_DISTANCE_COLUMNS)
    if distances is not None:
        status = without_linkable(cleared_levels(distances, thresholds), too_close)
        here = status[status["level"].isin(levels)]
        settled |= set(here.loc[here["cleared"] | here["no_face_original"], "anon_id"])
    return settled


# What the gate reads of each table: its decisions, the release's manifest and the cost sentence.
GATE_MANIFEST_COLUMNS = ["anon_id", "level", "t_boom", "n_steps", "status", "error", "output_path", "sha256_output"]
GATE_DISTANCE_COLUMNS = ["anon_id", "level", "face", "recognizer", "status", "distance"]


def shard_rows(job: Job):
    """(manifest rows, distance rows) of consecutive shards, about ROWS_PER_STEP manifest rows at a time
    (pipeline.tables.read.table_steps; one shard at a time spent more on pandas' per-call cost than on the rows: 15 s
    instead of 8 s at 10^6). Every row of an image (at every level) comes in the same step."""
    empty = DISTANCES_SCHEMA.empty_table().select(GATE_DISTANCE_COLUMNS).to_pandas()
    sources = [(job.layout.manifest, GATE_MANIFEST_COLUMNS), (job.layout.distances, GATE_DISTANCE_COLUMNS)]
    for manifest, distances in table_steps(sorted(shards_with_rows(job.layout)), sources):
        found = [empty] if distances is None else [empty, distances.to_pandas()]
        yield manifest.to_pandas(), pd.concat(found, ignore_index=True)


@dataclass
class Decision:
    """The gate's outcome over the whole folder, gathered a step of shards at a time: counts here, the rows in
    the steps' scratch tables (`released` and `withheld` read them back, for the release)."""

    folder: Location  # private/.gate-decision: one released and one withheld table per step
    steps: int = 0
    per_level: Counter = field(default_factory=Counter)  # released images by their lowest clearing level
    reasons: Counter = field(default_factory=Counter)  # withheld images by reason
    spent_steps: int = 0  # model evaluations of the ok rows at ladder levels
    n_images: int = 0  # images with an ok output at some ladder level
    unique_size: list[str] = field(default_factory=list)  # released anon_ids whose size no other input has

    @property
    def n_released(self) -> int:
        return sum(self.per_level.values())

    @property
    def n_withheld(self) -> int:
        return sum(self.reasons.values())

    def keep(self, released: pd.DataFrame, withheld: pd.DataFrame) -> None:
        for name, rows in (("released", released), ("withheld", withheld)):
            table = pa.Table.from_pandas(rows, preserve_index=False)
            write_scratch_table(table, self.folder / f"{name}-{self.steps:05d}.parquet")
        self.per_level.update(released["level"].astype(float).tolist())
        self.reasons.update(withheld["reason"].tolist())
        self.steps += 1

    def _read(self, name: str, empty: pd.DataFrame) -> pd.DataFrame:
        if not self.steps:
            return empty
        found = [storage.read_table(self.folder / f"{name}-{n:05d}.parquet").to_pandas() for n in range(self.steps)]
        return pd.concat(found, ignore_index=True)

    @cached_property
    def released(self) -> pd.DataFrame:
        """One row per released image, at its lowest clearing ladder level."""
        return self._read("released", _empty_released())

    @cached_property
    def withheld(self) -> pd.DataFrame:
        """anon_id, last_level, reason."""
        return self._read("withheld", pd.DataFrame(columns=["anon_id", "last_level", "reason"]))

    def remove(self) -> None:
        storage.remove_tree(self.folder)


def decision_folder(layout: RunLayout) -> Location:
    """Where a decision keeps its steps' tables until the release is built (a killed one's are left there)."""
    return layout.private / ".gate-decision"


def decided_ids(layout: RunLayout) -> set[str] | None:
    found = None
    for path in (layout.private / "released.parquet", layout.private / "withheld.parquet"):
        if path.is_file():
            ids = storage.read_table(path, columns=["anon_id"]).column("anon_id").to_pylist()
            found = (found or set()) | set(ids)
    if found is not None and not (layout.private / "released.parquet").is_file():
        return None  # withheld.parquet alone: written before released.parquet was kept
    return found


def decide(job: Job, current=None) -> Decision:
    """Release or withhold each image, a step of shards at a time (see `decide_shard`), with what the report
    needs; only images in `current` when given (a set of anon_ids, or pipeline.execution.discovery.ListedIds):
    rows of images no longer in the input are ignored."""
    ladder = [float(v) for v in job.settings.ladder]
    thresholds = gate_thresholds(job.settings)
    too_close = linkable(job.layout, job.settings.gate_max_linkage) if job.settings.gate_max_linkage else set()
    decision = Decision(decision_folder(job.layout))
    decision.remove()
    sizes = SizeCounts()
    for manifest, distances in shard_rows(job):
        manifest = manifest[manifest["level"].astype(float).isin(ladder)]
        if current is not None:
            here = current if isinstance(current, (set, frozenset)) else current.covering(manifest, distances)
            manifest = manifest[manifest["anon_id"].isin(here)]
            distances = distances[distances["anon_id"].isin(here)]
        step_released, step_withheld = decide_shard(manifest, distances, thresholds, too_close)
        decision.keep(step_released, step_withheld)
        ok = manifest[manifest["status"] == "ok"]
        decision.spent_steps += int(ok["n_steps"].sum())
        decision.n_images += int(ok["anon_id"].nunique())
        sizes.add(job.layout.root, ok, step_released["anon_id"])
    decision.unique_size = sizes.unique()
    return decision


def _empty_released() -> pd.DataFrame:
    return pd.DataFrame(columns=GATE_MANIFEST_COLUMNS + ["cleared", "no_face_original"])


def decide_shard(
    manifest: pd.DataFrame, distances: pd.DataFrame, thresholds: dict[str, float], too_close: set = frozenset()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(released rows at their lowest clearing level, withheld anon_ids with the reason) of some images'
    rows at ladder levels (every row of each image); `too_close`: (anon_id, level) the linkage rule holds back."""
    status = without_linkable(cleared_levels(distances, thresholds), too_close)
    ok = manifest[manifest["status"] == "ok"].merge(status, on=["anon_id", "level"], how="left")
    ok["cleared"] = ok["cleared"].astype("boolean").fillna(False).astype(bool)
    ok["no_face_original"] = ok["no_face_original"].astype("boolean").fillna(False).astype(bool)
    released = ok[ok["cleared"]].sort_values("level").groupby("anon_id", as_index=False).first()
    no_face = set(ok.loc[ok["no_face_original"], "anon_id"])
    # Each withheld image's highest level tried, in one vectorized pass (a loop per image took minutes at 10^6).
    rest = manifest[~manifest["anon_id"].isin(released["anon_id"])].sort_values(["anon_id", "level"], kind="stable")
    last = rest.drop_duplicates("anon_id", keep="last")
    failed = (last["status"] != "ok").to_numpy()
    error_reason = [str(e).split(":", 1)[0] or "error" for e in last["error"].tolist()]
    last_levels = last["level"].astype(float).tolist()
    reason = [
        err if bad else NO_FACE if aid in no_face else LINKABLE if (aid, lv) in too_close else NEVER_CLEARED
        for aid, lv, bad, err in zip(last["anon_id"].tolist(), last_levels, failed, error_reason, strict=True)
    ]
    withheld = pd.DataFrame(
        {"anon_id": last["anon_id"].tolist(), "last_level": last["level"].astype(float).tolist(), "reason": reason},
        columns=["anon_id", "last_level", "reason"],
    )
    return released, withheld
