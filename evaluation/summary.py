"""Per (level, recognizer) statistics of the distances, from partial results that merge exactly.

Pure pandas/numpy, apart from looking up deepface's own default thresholds (a plain table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from evaluation.engine import deepface_module
from evaluation.settings import EvaluationSettings

# Two-sided 95%: the normal quantile 1 - 0.05 / 2.
Z_95 = 1.959964

# The attacks per (level, recognizer), filled where the run kept embeddings (pipeline.outputs.linkage_attack): outputs
# attacked, originals in the gallery, hit@1 with its 95% Wilson interval, hit@5, chance hit@1; linkage
# always, re-identification where the run knows who is in the images.
ATTACK_COLUMNS = (
    "linkage_queries",
    "linkage_gallery",
    "linkage_rank1",
    "linkage_rank1_ci_low",
    "linkage_rank1_ci_high",
    "linkage_rank5",
    "linkage_chance1",
    "reid_queries",
    "reid_not_attackable",
    "reid_gallery",
    "reid_rank1",
    "reid_rank1_ci_low",
    "reid_rank1_ci_high",
    "reid_rank5",
    "reid_chance1",
    "reid_people_attackable",
    "reid_people_single",
)
# The verdict per level, repeated on each recognizer's row (filled by the pipeline, `with_verdict`): the gate's
# threshold of the row's recognizer (the stricter of the run's and deepface's own), and, at that level, the images
# that clear EVERY recognizer at those thresholds (for a gate run at its levels: the releasable ones), with
# their fraction and its 95% Wilson interval. Missing (null) where no verdict was computed.
VERDICT_COLUMNS = (
    "gate_threshold",
    "verdict_images",
    "verdict_cleared",
    "verdict_fraction",
    "verdict_ci_low",
    "verdict_ci_high",
)
# Counts that may be missing (no attack; n_faces outside face-region mode): nullable integers.
NULLABLE_COUNTS = (
    "n_faces",
    "diversity_images",
    "linkage_queries",
    "linkage_gallery",
    "reid_queries",
    "reid_not_attackable",
    "reid_gallery",
    "reid_people_attackable",
    "reid_people_single",
    "verdict_images",
    "verdict_cleared",
)

SUMMARY_COLUMNS = (
    "level",
    "label",
    "recognizer",
    "metric",
    "n_images",
    "n_faces",
    "n_evaluated",
    "n_no_face_original",
    "n_no_face_anonymized",
    "n_compared_at_original_box",
    "n_errors",
    "n_missing_output",
    "n_cleared",
    "fraction_cleared",
    "ci_low",
    "ci_high",
    "n_images_cleared",
    "fraction_images_cleared",
    "distance_mean",
    "distance_std",
    "distance_sem",
    "distance_median",
    "threshold",
    "deepface_threshold",
    *ATTACK_COLUMNS,
    # --samples K (filled by the pipeline from the private embeddings): images with 2+ samples, and the mean
    # cosine distance between the samples of one image.
    "diversity_images",
    "diversity_mean",
    *VERDICT_COLUMNS,
)


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials; (nan, nan) when ``n`` is 0.

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not empty at k = 0 or k = n,
    which is where an anonymizer that clears (almost) everything sits.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k!r}, n={n!r}")
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # Exact ends where rounding could leave them a hair inside or outside [0, 1].
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


@dataclass
class PartialStats:
    """Counts and distance moments for one (level, recognizer) over some rows; merge to combine.

    Distances are those of "ok" rows. ``mean`` and ``m2`` (sum of squared deviations from the
    mean) merge exactly in any order (Chan et al.), unlike a running sum of squares, which loses
    digits when the spread is small; the distances themselves are kept for the exact median.
    ``n_no_face_anonymized`` and ``n_compared_at_original_box`` count "ok" rows whose anonymized
    image had no detected face, and those of them compared at the original's face box (the others
    were compared on the whole image, on request).

    In face-region mode a row is a face (its ``face`` column is set): ``n_faces`` counts those rows,
    the row counts (``n_evaluated``, ``n_cleared``...) are faces, and ``n_images`` counts distinct
    images. An image is cleared when each of its rows is "ok" and cleared (``n_images_cleared``) out of
    the images with an "ok" or missing-output row (``n_images_compared``). With one row per image, as
    in whole-image mode, the image counts equal the row counts. All rows of an image must come in the
    same ``from_rows`` call (they do: an image's rows are in one shard).
    """

    n_images: int = 0
    n_faces: int | None = None
    n_images_compared: int = 0
    n_images_cleared: int = 0
    n_evaluated: int = 0
    n_no_face_original: int = 0
    n_no_face_anonymized: int = 0
    n_compared_at_original_box: int = 0
    n_errors: int = 0
    n_missing_output: int = 0
    n_cleared: int = 0
    mean: float = 0.0
    m2: float = 0.0
    distances: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, threshold: float) -> PartialStats:
        """Partial results for distance rows of one (level, recognizer); cleared is ``distance > threshold``."""
        ok = rows["status"] == "ok"
        distances = rows.loc[ok, "distance"].to_numpy(dtype=np.float64)
        face_anonymized = rows.loc[ok, "face_anonymized"]
        # Rows written before compared_at existed have no such column: none was compared there.
        compared_at = rows.loc[ok, "compared_at"] if "compared_at" in rows else pd.Series(dtype=object)
        clears = ok & (rows["distance"].astype(float) > threshold)
        faces = rows["face"].notna() if "face" in rows else pd.Series(False, index=rows.index)
        if faces.any():
            per_image = pd.DataFrame(
                {"anon_id": rows["anon_id"], "clears": clears, "compared": ok | (rows["status"] == "missing_output")}
            ).groupby("anon_id", sort=False)
            images = (len(per_image), int(per_image["compared"].any().sum()), int(per_image["clears"].all().sum()))
            n_faces = int(faces.sum())
        else:
            compared = int(ok.sum() + (rows["status"] == "missing_output").sum())
            images, n_faces = (len(rows), compared, int(clears.sum())), None
        return cls(
            n_images=images[0],
            n_faces=n_faces,
            n_images_compared=images[1],
            n_images_cleared=images[2],
            n_evaluated=int(ok.sum()),
            n_no_face_original=int((rows["status"] == "no_face_original").sum()),
            n_no_face_anonymized=int((face_anonymized == False).sum()),  # noqa: E712 - object column
            n_compared_at_original_box=int((compared_at == "original_box").sum()),
            n_errors=int((rows["status"] == "error").sum()),
            n_missing_output=int((rows["status"] == "missing_output").sum()),
            n_cleared=int((distances > threshold).sum()),
            mean=float(distances.mean()) if len(distances) else 0.0,
            m2=float(((distances - distances.mean()) ** 2).sum()) if len(distances) else 0.0,
            distances=distances,
        )

    def merge(self, other: PartialStats) -> PartialStats:
        """The partial results of both sets of rows together."""
        n_a, n_b = self.n_evaluated, other.n_evaluated
        n = n_a + n_b
        delta = other.mean - self.mean
        faces = None if self.n_faces is None and other.n_faces is None else (self.n_faces or 0) + (other.n_faces or 0)
        return PartialStats(
            n_images=self.n_images + other.n_images,
            n_faces=faces,
            n_images_compared=self.n_images_compared + other.n_images_compared,
            n_images_cleared=self.n_images_cleared + other.n_images_cleared,
            n_evaluated=n,
            n_no_face_original=self.n_no_face_original + other.n_no_face_original,
            n_no_face_anonymized=self.n_no_face_anonymized + other.n_no_face_anonymized,
            n_compared_at_original_box=self.n_compared_at_original_box + other.n_compared_at_original_box,
            n_errors=self.n_errors + other.n_errors,
            n_missing_output=self.n_missing_output + other.n_missing_output,
            n_cleared=self.n_cleared + other.n_cleared,
            mean=(self.mean * n_a + other.mean * n_b) / n if n else 0.0,
            m2=self.m2 + other.m2 + (delta * delta * n_a * n_b / n if n else 0.0),
            distances=np.concatenate([self.distances, other.distances]),
        )

    def finish(self) -> dict:
        """The summary statistics; NaN where they are undefined (no distances, or std of one).

        The cleared fraction counts a missing output (another tool skipped the image) as not cleared:
        its denominator is ``n_evaluated + n_missing_output``.
        """
        n = self.n_evaluated
        trials = n + self.n_missing_output
        std = math.sqrt(self.m2 / (n - 1)) if n >= 2 else math.nan
        low, high = wilson_interval(self.n_cleared, trials)
        return {
            "n_images": self.n_images,
            "n_faces": self.n_faces,
            "n_evaluated": n,
            "n_no_face_original": self.n_no_face_original,
            "n_no_face_anonymized": self.n_no_face_anonymized,
            "n_compared_at_original_box": self.n_compared_at_original_box,
            "n_errors": self.n_errors,
            "n_missing_output": self.n_missing_output,
            "n_cleared": self.n_cleared,
            "fraction_cleared": self.n_cleared / trials if trials else math.nan,
            "ci_low": low,
            "ci_high": high,
            "n_images_cleared": self.n_images_cleared,
            "fraction_images_cleared": (
                self.n_images_cleared / self.n_images_compared if self.n_images_compared else math.nan
            ),
            "distance_mean": self.mean if n else math.nan,
            "distance_std": std,
            "distance_sem": std / math.sqrt(n) if n >= 2 else math.nan,
            "distance_median": float(np.median(self.distances)) if n else math.nan,
        }


def partial_stats(distances: pd.DataFrame, settings: EvaluationSettings) -> dict[tuple[float, str], PartialStats]:
    """Partial results per (level, recognizer) of some distance rows (e.g. one shard)."""
    parts = {}
    # dropna=False: another tool's output may have no level (NaN); its rows are one group.
    for (level, recognizer), rows in distances.groupby(["level", "recognizer"], sort=False, dropna=False):
        # One NaN object for "no level", so that merged keys meet (NaN never equals another NaN).
        key = math.nan if pd.isna(level) else float(level)
        parts[(key, str(recognizer))] = PartialStats.from_rows(rows, settings.threshold_for(recognizer))
    return parts


def merge_partials(*partials: dict[tuple[float, str], PartialStats]) -> dict[tuple[float, str], PartialStats]:
    """Combine per-(level, recognizer) partial results of disjoint sets of rows."""
    merged: dict[tuple[float, str], PartialStats] = {}
    for part in partials:
        for key, stats in part.items():
            merged[key] = merged[key].merge(stats) if key in merged else stats
    return merged


def summary_from_partials(
    partials: dict[tuple[float, str], PartialStats], settings: EvaluationSettings, label: str | None = None
) -> pd.DataFrame:
    """The summary table from (merged) partial results; rows by level, then recognizer order.

    ``label`` names results that have no level (another tool's output); rows with a level are
    labelled "level L".
    """
    order = {name: i for i, name in enumerate(settings.recognizers)}

    def sort_key(key):
        level = key[0]
        return (math.isnan(level), 0.0 if math.isnan(level) else level, order.get(key[1], len(order)), key[1])

    rows = []
    for level, recognizer in sorted(partials, key=sort_key):
        name = (label or "no level") if math.isnan(level) else f"level {level:g}"
        rows.append(
            {"level": level, "label": name, "recognizer": recognizer, "metric": settings.metric}
            | partials[(level, recognizer)].finish()
            | {
                "threshold": settings.threshold_for(recognizer),
                "deepface_threshold": deepface_threshold(recognizer, settings.metric, settings.engine),
            }
        )
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    frame = frame.astype({name: "Int64" for name in NULLABLE_COUNTS})
    return frame.astype(
        {name: "int64" for name in SUMMARY_COLUMNS if name.startswith("n_") and name not in NULLABLE_COUNTS}
    )


def summarize(distances: pd.DataFrame, settings: EvaluationSettings, label: str | None = None) -> pd.DataFrame:
    """One row per (level, recognizer) of the distance rows (columns: ``SUMMARY_COLUMNS``).

    ``n_images`` counts every row, errors included; the distance statistics and the cleared
    fraction cover the "ok" rows (``n_evaluated``). Cleared is recomputed as ``distance >
    threshold`` with ``settings``' thresholds, so a report can be remade with another threshold.
    Undefined values are NaN: everything distance-based when ``n_evaluated`` is 0, the standard
    deviation (sample, ddof=1) and the standard error when it is 1.
    """
    return summary_from_partials(partial_stats(distances, settings), settings, label)


def deepface_threshold(model_name: str, metric: str = "cosine", engine: str = "pytorch") -> float:
    """deepface's own default threshold for ``model_name`` and ``metric``; NaN when it has none."""
    table = deepface_module("deepface.config.threshold", engine).thresholds
    value = table.get(model_name, {}).get(metric)
    return math.nan if value is None else float(value)


def image_verdicts(distances: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """Per (anon_id, level) of `distances`: `clears`, the gate's rule without its linkage rule: every recognizer
    of `thresholds` evaluated the image (every face of it, in face-region mode) and found distance > its threshold.

    Rows of one (anon_id, level) must all be in `distances` (they are written together, in one file)."""
    columns = ["anon_id", "level", "clears"]
    d = distances[distances["recognizer"].isin(list(thresholds))]
    if d.empty:
        return pd.DataFrame(columns=columns)
    d = d.assign(ok=(d["status"] == "ok") & (d["distance"].astype(float) > d["recognizer"].map(thresholds)))
    grouped = d.groupby(["anon_id", "level"], dropna=False).agg(n=("recognizer", "nunique"), ok=("ok", "all"))
    grouped["clears"] = (grouped["n"] == len(thresholds)) & grouped["ok"]
    return grouped.reset_index()[columns]


def verdict_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per level (NaN for a run without levels): images, images that clear every recognizer, its Wilson 95%."""
    columns = ["level", "n_images", "n_clear", "ci_low", "ci_high"]
    if verdicts.empty:
        return pd.DataFrame(columns=columns)
    per = verdicts.groupby("level", dropna=False)["clears"].agg(n_images="size", n_clear="sum").reset_index()
    per["n_clear"] = per["n_clear"].astype(int)
    per[["ci_low", "ci_high"]] = [wilson_interval(k, n) for k, n in zip(per["n_clear"], per["n_images"], strict=True)]
    return per.sort_values("level")[columns].reset_index(drop=True)


def with_verdict(summary: pd.DataFrame, table: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """`summary` with its `VERDICT_COLUMNS` filled: each row's gate threshold (`thresholds`) and its level's
    `verdict_table` row (images, images clearing every recognizer at those thresholds, fraction, Wilson 95%)."""

    def key(level) -> float | str:
        return "none" if pd.isna(level) else float(level)  # NaN never equals NaN: one key for "no level"

    found = {key(r.level): r for r in table.itertuples(index=False) if int(r.n_images)}
    rows = [found.get(key(level)) for level in summary["level"]]
    out = summary.copy()
    out["gate_threshold"] = [float(thresholds.get(name, math.nan)) for name in out["recognizer"]]
    out["verdict_images"] = pd.array([None if r is None else int(r.n_images) for r in rows], dtype="Int64")
    out["verdict_cleared"] = pd.array([None if r is None else int(r.n_clear) for r in rows], dtype="Int64")
    out["verdict_fraction"] = [math.nan if r is None else int(r.n_clear) / int(r.n_images) for r in rows]
    out["verdict_ci_low"] = [math.nan if r is None else float(r.ci_low) for r in rows]
    out["verdict_ci_high"] = [math.nan if r is None else float(r.ci_high) for r in rows]
    return out


def _percent(k: int, n: int) -> str:
    low, high = wilson_interval(k, n)
    return f"{k / n:.0%}, 95% CI {low:.0%}–{high:.0%}"


def _attack_text(rows: pd.DataFrame) -> str:
    """The attacks' rank-1 rates against chance, the worst recognizer's (highest rate); "" when none ran."""
    found = []
    for prefix, name in (("linkage", "linkage"), ("reid", "re-identification")):
        rate, chance = f"{prefix}_rank1", f"{prefix}_chance1"
        if rate not in rows or rows[rate].isna().all():
            continue
        worst = rows.loc[rows[rate].astype(float).idxmax()]
        odds = float(worst[chance]) if chance in worst and pd.notna(worst[chance]) else math.nan
        low = worst.get(f"{prefix}_rank1_ci_low", math.nan)
        text = f"{name} rank-1 {float(worst[rate]):.0%}" + ("" if math.isnan(odds) else f" (chance {odds:.0%})")
        # Above chance beyond doubt (the interval's low end above it): the attack names people. Said in the
        # headline, so that a reader who stops there does not believe every image is anonymous.
        if not math.isnan(odds) and pd.notna(low) and float(low) > odds:
            text += " ABOVE CHANCE: " + (
                "outputs are re-identified" if prefix == "reid" else "outputs link to their originals"
            )
        found.append(text)
    return (" Attacks: " + ", ".join(found) + ".") if found else ""


def verdict_lines(
    table: pd.DataFrame,
    thresholds: dict[str, float],
    summary: pd.DataFrame,
    released: tuple[int, int] | None = None,
) -> list[str]:
    """The verdict, one line per level (for a gate run one line: (released, images) of `released`), at the
    gate's `thresholds`, with what the attacks of `summary` found at that level when they ran."""
    at = "the gate's thresholds (" + ", ".join(f"{name} {value:g}" for name, value in thresholds.items()) + ")"
    if released is not None:
        k, n = released
        if not n:
            return []
        withheld = f"; {n - k} withheld (do NOT clear)" if k < n else ""
        attacks = _attack_text(summary) if summary is not None else ""
        return [
            f"Verdict: released {k} of {n} images ({_percent(k, n)}), each clearing every recognizer at {at}"
            f"{withheld}.{attacks}"
        ]
    lines = []
    for row in table.itertuples(index=False):
        k, n = int(row.n_clear), int(row.n_images)
        if not n:
            continue
        where = "" if pd.isna(row.level) else f" at level {row.level:g}"
        rows = summary if pd.isna(row.level) else summary[summary["level"] == row.level]
        outcome = "all clear" if k == n else f"{n - k} of {n} do NOT clear"
        lines.append(
            f"Verdict{where}, at {at}: {k}/{n} images clear every recognizer ({_percent(k, n)}); {outcome}."
            + _attack_text(rows)
        )
    return lines


def protocol_label(summary: pd.DataFrame) -> str:
    """How the per-recognizer "cleared" counts were decided: the paper's protocol (0.4) or the run's thresholds."""
    per = summary.drop_duplicates("recognizer")
    if len(per) and (per["threshold"].astype(float) == 0.4).all():
        return "the paper's protocol (threshold 0.4)"
    return "the run's thresholds (" + ", ".join(f"{r.recognizer} {r.threshold:g}" for r in per.itertuples()) + ")"
