"""The attacker's view: the linkage attack over the run's private embeddings (threat model, attacker 1).

A linker holds the original dataset and ranks the originals by their distance to each released image.
For each recognizer, the gallery is one embedding per original (the face its distance was taken at,
kept in private/embeddings.parquet by the evaluation stage); for each level, every "ok" output is a
query, and its rank is that of its own original among all originals (evaluation.attacks.rank_of_true:
exact and chunked; ties count for the attacker, so rates are upper bounds). One row per (output,
recognizer) goes to private/attacks.parquet: per row, a rank says how findable that one output is, and a
re-identification row's chance (its person's other photos over the gallery) and null rank (a person with
one photo) say how many photos its person has, so the rows never leave private/. Only aggregates per
(level, recognizer) are public: the hit@1 and hit@5 rates with Wilson intervals, the counts and the rate of
an attacker who guesses over the whole set, in the summary and the report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from evaluation.report import linkage_plot_html
from evaluation.report_blocks import Plot, Section, Text, rows_table, section
from evaluation.summary import ATTACK_COLUMNS, NULLABLE_COUNTS
from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.outputs import attack_tasks
from pipeline.outputs.attack_math import face_column, face_key
from pipeline.tables.read import table_files
from pipeline.tables.schemas import ATTACKS_SCHEMA
from pipeline.tables.write import write_private_table

LINKAGE = "linkage"
REID = "reid"


# Outputs attacked per (level, recognizer): the cost is queries x originals x embedding size, so at 10^6
# images attacking every output would take hours; 10^4 queries give the rate to within about +-1%
# (Wilson), against every original.
MAX_QUERIES = 10_000


def linkage_attack(layout: RunLayout, max_queries: int | None = MAX_QUERIES, reid: bool = True) -> pd.DataFrame:
    """One row per attacked (output, recognizer, attack) (ATTACKS_SCHEMA): the linkage attack always, the
    re-identification attack where private/identities.parquet says who is in the images.

    Linkage: the rank of the output's own original among all originals. Re-identification: the rank of
    the first photo of the same person among all originals but the output's own source photo (null
    where that person has no other photo: not attackable this way). At most `max_queries` outputs per
    (level, recognizer) are attacked: those with the smallest anon_ids, a keyed hash, i.e. a sample that
    no one without the secret can choose or predict; None attacks every output (the gate's linkage rule).

    In face-region mode every face is its own query and its own original in the gallery; re-identification
    uses the image's identity label only for images with one face (a group photo's label names no face).
    """
    if attack_tasks.available():  # Ray tasks over shards: the driver holds no embedding
        return _finish(
            [
                ATTACKS_SCHEMA.empty_table().to_pandas(),
                *attack_frame(attack_tasks.sharded_ranks(layout, max_queries, reid)),
            ]
        )
    from evaluation.attacks import rank_of_true, reid_rank  # torch: only where there are embeddings to rank

    by_recognizer: dict[str, list[pa.Table]] = {}
    for path in table_files(layout.embeddings):
        table = storage.parquet_file(path).read()
        for name in pc.unique(table["recognizer"]).to_pylist():
            by_recognizer.setdefault(name, []).append(table.filter(pc.equal(table["recognizer"], name)))
    labels = _identities(layout)
    frames = [ATTACKS_SCHEMA.empty_table().to_pandas()]
    for name, tables in sorted(by_recognizer.items()):
        rows = pa.concat_tables(tables, promote_options="default")
        ids = rows["anon_id"].to_numpy(zero_copy_only=False)
        faces = face_column(rows)
        keys = (
            ids if faces is None else np.array([face_key(a, f) for a, f in zip(ids, faces, strict=True)], dtype=object)
        )
        levels = rows["level"].to_numpy()
        originals = _matrix(rows["original"])
        # The gallery: each original (face) once (its rows at every level share the original's face).
        gallery_keys, first = np.unique(keys, return_index=True)
        gallery = originals[first]
        chosen = _queries(keys, levels, max_queries)
        ids, keys, levels, queries = ids[chosen], keys[chosen], levels[chosen], _matrix(rows["anonymized"])[chosen]
        face_of = None if faces is None else faces[chosen]
        source = np.searchsorted(gallery_keys, keys)
        ranks = rank_of_true(queries, gallery, source, device=_device()).astype(np.float64)
        chance = np.full(len(ids), 1 / len(gallery))
        frames.append(_rows(ids, levels, name, LINKAGE, ranks, len(gallery), chance, face_of))
        gallery_labels = _face_labels(gallery_keys, labels, faces is not None)
        known = np.array([k in gallery_labels for k in gallery_keys], dtype=bool)
        if not reid or known.sum() < 2:
            continue
        # Re-identification: only originals whose person is known, and outputs of those.
        people = np.array([gallery_labels[k] for k in gallery_keys[known]], dtype=object)
        where = np.cumsum(known) - 1  # gallery row -> row among the known
        asked = known[source]
        query_source = where[source[asked]]
        ranks = reid_rank(queries[asked], gallery[known], people, query_source, device=_device())
        # Chance of a guess: the person's other photos over the other photos (Counter of people).
        counts = pd.Series(people).value_counts()
        others = counts.reindex(people[query_source]).to_numpy() - 1
        chance = others / (len(people) - 1)
        asked_faces = None if face_of is None else face_of[asked]
        reid_rows = _rows(ids[asked], levels[asked], name, REID, ranks, int(known.sum()), chance, asked_faces)
        reid_rows["people_attackable"] = int((counts >= 2).sum())
        reid_rows["people_single"] = int((counts == 1).sum())
        frames.append(reid_rows)
    return _finish(frames)


def _finish(frames: list[pd.DataFrame]) -> pd.DataFrame:
    attacks = pd.concat([f for f in frames if len(f.columns)], ignore_index=True)
    for column in ("rank", "people_attackable", "people_single"):
        attacks[column] = attacks[column].astype("Int64")
    attacks["face"] = attacks["face"].astype("Int32")
    for k in ("hit_1", "hit_5"):
        attacks[k] = attacks[k].astype("boolean")
    return attacks.sort_values(["attack", "level", "recognizer", "anon_id", "face"], ignore_index=True)


def write_attacks(layout: RunLayout, attacks: pd.DataFrame) -> None:
    """private/attacks.parquet: the attack rows; an unchanged file (a rerun that found everything done) is left
    alone, and the public per-row file that earlier versions wrote to evaluation/ is removed."""
    table = pa.Table.from_pandas(attacks, schema=ATTACKS_SCHEMA, preserve_index=False)
    if not (layout.attacks.is_file() and storage.read_table(layout.attacks).equals(table)):
        write_private_table(table, layout.attacks)
    earlier = layout.evaluation / "attacks.parquet"
    if earlier.is_file():
        earlier.unlink()


def linkable(layout: RunLayout, max_rank: int) -> set[tuple[str, float]]:
    """(anon_id, level) of every output whose own original some recognizer ranks within `max_rank`."""
    if attack_tasks.available():  # the tasks send back only the outputs within `max_rank`
        found = attack_tasks.sharded_ranks(layout, None, reid=False, within=max_rank)
        return {(a, float(v)) for r in found for a, v in zip(r.anon_id.tolist(), r.level.tolist(), strict=True)}
    attacks = linkage_attack(layout, max_queries=None, reid=False)
    close = attacks[attacks["rank"] <= max_rank]
    return set(zip(close["anon_id"].tolist(), close["level"].astype(float).tolist(), strict=True))


def _face_labels(keys: np.ndarray, labels: dict[str, str], by_face: bool) -> dict[str, str]:
    """Gallery key -> person: the image's label, and in face-region mode only for images with one face."""
    if not by_face:
        return {k: labels[k] for k in keys if k in labels}
    image = [k.split("#", 1)[0] for k in keys]
    faces_per_image = pd.Series(image).value_counts()
    return {k: labels[a] for k, a in zip(keys, image, strict=True) if a in labels and faces_per_image[a] == 1}


def _rows(
    ids, levels, recognizer: str, attack: str, ranks: np.ndarray, gallery: int, chance, faces=None
) -> pd.DataFrame:
    attacked = ~np.isnan(ranks)
    return pd.DataFrame(
        {
            "anon_id": ids,
            "level": levels,
            "face": pd.Series([None] * len(ids) if faces is None else list(faces), dtype="Int32"),
            "recognizer": recognizer,
            "attack": attack,
            "rank": pd.Series(np.where(attacked, ranks, 0), dtype="Int64").where(attacked, pd.NA),
            "gallery_size": gallery,
            "hit_1": pd.Series(ranks <= 1, dtype="boolean").where(attacked, pd.NA),
            "hit_5": pd.Series(ranks <= 5, dtype="boolean").where(attacked, pd.NA),
            "chance_1": np.where(attacked, chance, np.nan),
        }
    )


def _device() -> str:
    """The driver's GPU where it has one: the search is matrix products (evaluation.attacks)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _identities(layout: RunLayout) -> dict[str, str]:
    """anon_id -> who is in the image, where the run was told (private/identities.parquet)."""
    if not layout.identities.is_file():
        return {}
    table = storage.read_table(layout.identities)
    if "identity" not in table.schema.names:
        return {}
    ids, people = table["anon_id"].to_pylist(), table["identity"].to_pylist()
    return {a: p for a, p in zip(ids, people, strict=True) if p is not None}


def _queries(ids: np.ndarray, levels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of the rows attacked: per level, the `limit` smallest anon_ids."""
    keys = np.where(np.isnan(levels), -1.0, levels)
    chosen = []
    for level in np.unique(keys):
        rows = np.flatnonzero(keys == level)
        chosen.append(rows[np.argsort(ids[rows], kind="stable")[:limit]] if limit is not None else rows)
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A list<float32> column of equal-length vectors as an (n, d) float32 array."""
    flat = pc.list_flatten(column).to_numpy()
    return flat.reshape(len(column), -1) if len(column) else flat.reshape(0, 0)


def with_linkage(summary: pd.DataFrame, attacks: pd.DataFrame) -> pd.DataFrame:
    """The summary with its attack columns filled from the attack rows, per (level, recognizer)."""
    from evaluation.attacks import hit_rates

    stats = []
    for (attack, level, recognizer), rows in attacks.groupby(["attack", "level", "recognizer"], dropna=False):
        ranks = rows["rank"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        rates = hit_rates(ranks, (1, 5))
        stats.append(
            {
                "level": float(level),
                "recognizer": recognizer,
                f"{attack}_queries": rates["n_attacked"],
                f"{attack}_gallery": int(rows["gallery_size"].iloc[0]),
                f"{attack}_rank1": rates["hits"][1]["rate"],
                f"{attack}_rank1_ci_low": rates["hits"][1]["ci_low"],
                f"{attack}_rank1_ci_high": rates["hits"][1]["ci_high"],
                f"{attack}_rank5": rates["hits"][5]["rate"],
                f"{attack}_chance1": float(rows["chance_1"].mean()) if rates["n_attacked"] else np.nan,
                **(
                    {
                        "reid_not_attackable": rates["n_not_attackable"],
                        "reid_people_attackable": int(rows["people_attackable"].iloc[0]),
                        "reid_people_single": int(rows["people_single"].iloc[0]),
                    }
                    if attack == REID
                    else {}
                ),
            }
        )
    if not stats:
        return summary
    found = pd.DataFrame(stats).groupby(["level", "recognizer"], dropna=False, as_index=False).first()
    merged = summary.drop(columns=[c for c in ATTACK_COLUMNS if c in found]).merge(
        found, on=["level", "recognizer"], how="left"
    )
    for name in NULLABLE_COUNTS:
        merged[name] = merged[name].astype("Int64")
    return merged[list(summary.columns)]


def linkage_section(summary: pd.DataFrame) -> Section | None:
    """The report's "attacker's view" section: linkage and re-identification next to the fraction cleared."""
    rows = summary[summary["linkage_queries"].notna()]
    if rows.empty:
        return None
    reid = rows["reid_queries"].notna().any()
    headings = ["level", "recognizer", "cleared", "face kept", "linkage rank-1 (95% CI)", "rank-5", "chance rank-1"]
    headings += ["originals"]
    if reid:
        headings += ["re-identification rank-1 (95% CI)", "chance", "outputs attacked / not"]
        headings += ["people with 2+ photos / 1"]
    cells = []
    for r in rows.itertuples():
        row = [str(r.label), r.recognizer, _pct(r.fraction_cleared), _pct(_face_kept(r))]
        row += [f"{_pct(r.linkage_rank1)} ({_pct(r.linkage_rank1_ci_low)}-{_pct(r.linkage_rank1_ci_high)})"]
        row += [_pct(r.linkage_rank5), _pct(r.linkage_chance1), int(r.linkage_gallery)]
        if reid:
            row += [f"{_pct(r.reid_rank1)} ({_pct(r.reid_rank1_ci_low)}-{_pct(r.reid_rank1_ci_high)})"]
            row += [_pct(r.reid_chance1), f"{_count(r.reid_queries)} / {_count(r.reid_not_attackable)}"]
            row += [f"{_count(r.reid_people_attackable)} / {_count(r.reid_people_single)}"]
        cells.append(row)
    by_face = "n_faces" in rows and rows["n_faces"].notna().any()
    plot = linkage_plot_html(summary)
    return section(
        "Attacker's view: linkage and re-identification",
        Text(_FACES_NOTICE, "notice") if by_face else None,
        Text(_LINKAGE_TEXT),
        Text(_REID_TEXT) if reid else None,
        Text(
            "Utility next to privacy: face kept is the share of evaluated outputs in which the detector still finds "
            "a face (a dataset of faces should keep its faces)."
        ),
        rows_table(headings, cells, text_columns=2),
        Plot(plot) if plot else None,
    )


_FACES_NOTICE = (
    "Face-region mode: these rates are for the faces alone (each face is a query, and each original face is in "
    "the gallery). Every pixel outside the faces is the original's, so a linker who holds the original photos "
    "links every output to its source by its background."
)
_LINKAGE_TEXT = (
    "A linker who holds the original dataset embeds each anonymized image and ranks every original by distance. "
    "Rank-1 is the share of outputs whose own original comes first (ties count for the attacker: an upper bound), "
    "with its 95% Wilson interval; chance is what guessing achieves. Cleared (distance above the threshold) and "
    "not linkable are different questions: an image can clear every recognizer and still be nearer its own "
    "original than any other."
)
_REID_TEXT = (
    "A re-identifier holds other photos of the same people: re-identification rank-1 is the share of outputs "
    "whose nearest original (their own source photo left out) shows the same person. People with a single photo "
    "cannot be attacked this way: the table counts their outputs and them."
)


def _face_kept(row) -> float:
    return 1 - row.n_no_face_anonymized / row.n_evaluated if row.n_evaluated else float("nan")


def _count(value) -> str:
    return "-" if value is None or pd.isna(value) else str(int(value))


def _pct(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.1%}"


def attack_frame(found: list) -> list[pd.DataFrame]:
    """This module's rows (ATTACKS_SCHEMA, before its final casts) of the ranks found (`found`: one
    pipeline.outputs.attack_tasks.Ranked per recognizer)."""
    frames = []
    for r in found:
        frames.append(
            _rows(
                r.anon_id,
                r.level,
                r.recognizer,
                LINKAGE,
                r.linkage.astype(np.float64),
                r.gallery,
                np.full(len(r.anon_id), 1 / r.gallery) if r.gallery else np.empty(0),
                r.face,
            )
        )
        if r.reid is None:
            continue
        asked = r.reid_asked
        rows = _rows(
            r.anon_id[asked],
            r.level[asked],
            r.recognizer,
            REID,
            r.reid[asked],
            r.reid_gallery,
            r.reid_chance[asked],
            None if r.face is None else r.face[asked],
        )
        rows["people_attackable"] = r.people_attackable
        rows["people_single"] = r.people_single
        frames.append(rows)
    return frames if frames else [pd.DataFrame()]
