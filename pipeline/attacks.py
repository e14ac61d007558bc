"""The attacker's view: the linkage attack over the run's private embeddings (threat model, attacker 1).

A linker holds the original dataset and ranks the originals by their distance to each released image.
For each recognizer, the gallery is one embedding per original (the face its distance was taken at,
kept in private/embeddings.parquet by the evaluation stage); for each level, every "ok" output is a
query, and its rank is that of its own original among all originals (evaluation.attacks.rank_of_true:
exact and chunked; ties count for the attacker, so rates are upper bounds). One row per (output,
recognizer) goes to evaluation/attacks.parquet (anon_ids and ranks only: no embedding leaves private/);
hit@1 and hit@5 rates with Wilson intervals, and the rate of an attacker who guesses, go to the summary
and the report.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from evaluation.attacks import chance_rate, hit_rates, rank_of_true
from evaluation.summary import ATTACK_COLUMNS, NULLABLE_COUNTS

from .layout import RunLayout
from .records import table_files

LINKAGE = "linkage"
ATTACKS_SCHEMA = pa.schema(
    [
        ("anon_id", pa.string()),
        ("level", pa.float64()),
        ("recognizer", pa.string()),
        ("attack", pa.string()),
        ("rank", pa.int64()),
        ("gallery_size", pa.int64()),
        ("hit_1", pa.bool_()),
        ("hit_5", pa.bool_()),
    ]
)


# Outputs attacked per (level, recognizer): the cost is queries x originals x embedding size, so at 10^6
# images attacking every output would take hours; 10^4 queries give the rate to within about +-1%
# (Wilson), against every original.
MAX_QUERIES = 10_000


def linkage_attack(layout: RunLayout, max_queries: int = MAX_QUERIES) -> pd.DataFrame:
    """One row per attacked (output, recognizer): the rank of its own original among all originals
    (ATTACKS_SCHEMA). At most `max_queries` outputs per (level, recognizer) are attacked: those with the
    smallest anon_ids, a keyed hash, i.e. a sample that no one without the secret can choose or predict."""
    by_recognizer: dict[str, list[pa.Table]] = {}
    for path in table_files(layout.embeddings):
        table = pq.ParquetFile(path).read()
        for name in pc.unique(table["recognizer"]).to_pylist():
            by_recognizer.setdefault(name, []).append(table.filter(pc.equal(table["recognizer"], name)))
    frames = [ATTACKS_SCHEMA.empty_table().to_pandas()]
    for name, tables in sorted(by_recognizer.items()):
        rows = pa.concat_tables(tables)
        ids = rows["anon_id"].to_numpy(zero_copy_only=False)
        levels = rows["level"].to_numpy()
        originals = _matrix(rows["original"])
        anonymized = _matrix(rows["anonymized"])
        # The gallery: each original once (its rows at every level share the original's face).
        gallery_ids, first = np.unique(ids, return_index=True)
        gallery = originals[first]
        chosen = _queries(ids, levels, max_queries)
        ids, levels, anonymized = ids[chosen], levels[chosen], anonymized[chosen]
        ranks = rank_of_true(anonymized, gallery, np.searchsorted(gallery_ids, ids))
        frames.append(
            pd.DataFrame(
                {
                    "anon_id": ids,
                    "level": levels,
                    "recognizer": name,
                    "attack": LINKAGE,
                    "rank": ranks,
                    "gallery_size": len(gallery),
                    "hit_1": ranks <= 1,
                    "hit_5": ranks <= 5,
                }
            )
        )
    return pd.concat(frames, ignore_index=True).sort_values(["level", "recognizer", "anon_id"], ignore_index=True)


def _queries(ids: np.ndarray, levels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the rows attacked: per level, the `limit` smallest anon_ids."""
    keys = np.where(np.isnan(levels), -1.0, levels)
    chosen = []
    for level in np.unique(keys):
        rows = np.flatnonzero(keys == level)
        chosen.append(rows[np.argsort(ids[rows], kind="stable")[:limit]])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A list<float32> column of equal-length vectors as an (n, d) float32 array."""
    flat = pc.list_flatten(column).to_numpy()
    return flat.reshape(len(column), -1) if len(column) else flat.reshape(0, 0)


def with_linkage(summary: pd.DataFrame, attacks: pd.DataFrame) -> pd.DataFrame:
    """The summary with its attack columns filled from the attack rows, per (level, recognizer)."""
    stats = []
    for (level, recognizer), rows in attacks.groupby(["level", "recognizer"], dropna=False):
        rates = hit_rates(rows["rank"].to_numpy(), (1, 5))
        gallery = int(rows["gallery_size"].iloc[0])
        stats.append(
            {
                "level": float(level),
                "recognizer": recognizer,
                "linkage_queries": rates["n_attacked"],
                "linkage_gallery": gallery,
                "linkage_rank1": rates["hits"][1]["rate"],
                "linkage_rank1_ci_low": rates["hits"][1]["ci_low"],
                "linkage_rank1_ci_high": rates["hits"][1]["ci_high"],
                "linkage_rank5": rates["hits"][5]["rate"],
                "linkage_chance1": chance_rate(gallery, 1),
            }
        )
    if not stats:
        return summary
    found = pd.DataFrame(stats)
    merged = summary.drop(columns=list(ATTACK_COLUMNS)).merge(found, on=["level", "recognizer"], how="left")
    for name in NULLABLE_COUNTS:
        merged[name] = merged[name].astype("Int64")
    return merged[list(summary.columns)]


def linkage_section(summary: pd.DataFrame) -> tuple[str, str] | None:
    """The report's "attacker's view" section: rank-1 linkage next to the fraction cleared."""
    rows = summary[summary["linkage_queries"].notna()]
    if rows.empty:
        return None
    cells = "".join(
        f"<tr><td>{html.escape(str(r.label))}</td><td>{html.escape(r.recognizer)}</td>"
        f"<td>{_pct(r.fraction_cleared)}</td>"
        f"<td>{_pct(r.linkage_rank1)} ({_pct(r.linkage_rank1_ci_low)}-{_pct(r.linkage_rank1_ci_high)})</td>"
        f"<td>{_pct(r.linkage_rank5)}</td><td>{_pct(r.linkage_chance1)}</td><td>{int(r.linkage_gallery)}</td></tr>"
        for r in rows.itertuples()
    )
    body = (
        "<p>A linker who holds the original dataset embeds each anonymized image and ranks every original by "
        "distance. Rank-1 is the share of outputs whose own original comes first (ties count for the attacker: "
        "an upper bound), with its 95% Wilson interval; chance is what guessing achieves. Cleared (distance "
        "above the threshold) and not linkable are different questions: an image can clear every recognizer "
        "and still be nearer its own original than any other.</p>"
        "<table><tr><th>level</th><th>recognizer</th><th>cleared</th><th>linkage rank-1 (95% CI)</th>"
        f"<th>rank-5</th><th>chance rank-1</th><th>originals</th></tr>{cells}</table>"
    )
    return ("Attacker's view: linkage", body)


def _pct(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.1%}"
