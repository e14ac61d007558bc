"""The ranking tasks' arithmetic (pipeline.outputs.attack_tasks): how many originals are ahead of the answer
(the fast product, pairs within its rounding band decided in float64, byte-identical originals counted as one
group), the per-level query caps, identity codes and the vectors' form."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.folder import storage
from pipeline.folder.storage import Location

# Band pairs recomputed in float64 at a time (bounded memory even when every pair is in the band).
BAND_PAIRS = 2**18

NO_CODE = -1  # an original whose person is not known


def count_ahead(similarity, threshold, excluded, weight, queries, vectors, eps) -> np.ndarray:
    """Per row: the summed weight of gallery columns whose exact (float64) similarity is above the row's
    `threshold`, column `excluded` (local; out of range: none) left out. Decided by the fast `similarity`
    outside +-eps, by the float64 product inside."""
    import torch

    n, m = similarity.shape
    rows = np.flatnonzero((excluded >= 0) & (excluded < m))
    if len(rows):
        index = (
            torch.as_tensor(rows, device=similarity.device),
            torch.as_tensor(excluded[rows], device=similarity.device),
        )
        similarity = similarity.clone()
        similarity[index] = -math.inf
    high = torch.as_tensor(threshold + eps, device=similarity.device, dtype=torch.float64)
    low = torch.as_tensor(threshold - eps, device=similarity.device, dtype=torch.float64)
    s = similarity.to(torch.float64) if similarity.device.type != "cpu" else similarity
    special = np.flatnonzero(weight != 1)
    if s.device.type == "cpu":
        values = s.numpy()
        above = values > (threshold + eps)[:, None]
        count = np.count_nonzero(above, axis=1).astype(np.int64)
        if len(special):
            count += above[:, special].astype(np.int64) @ (weight[special].astype(np.int64) - 1)
        band_rows, band_cols = np.nonzero((values >= (threshold - eps)[:, None]) & ~above)
    else:
        above = s > high.unsqueeze(1)
        count = above.sum(dim=1).cpu().numpy().astype(np.int64)
        if len(special):
            extra = above[:, torch.as_tensor(special, device=s.device)].to(torch.int64)
            # Summed, not multiplied: CUDA has no integer matrix product.
            more = torch.as_tensor(weight[special].astype(np.int64) - 1, device=s.device)
            count += (extra * more).sum(dim=1).cpu().numpy()
        band = (s >= low.unsqueeze(1)) & ~above
        band_rows, band_cols = (x.cpu().numpy() for x in torch.nonzero(band, as_tuple=True))
    for start in range(0, len(band_rows), BAND_PAIRS):
        r, c = band_rows[start : start + BAND_PAIRS], band_cols[start : start + BAND_PAIRS]
        ahead = dot64(queries[r], vectors[c]) > threshold[r]
        count += np.bincount(r, weights=weight[c] * ahead, minlength=n).astype(np.int64)
    return count


def best_member(q, codes, asked, source, vectors, block_codes, weights, offset, best, group) -> None:
    """Update each asked query's best similarity over its person's photos in this block (its own source photo
    left out), and that photo's group."""
    order = np.argsort(block_codes, kind="stable")
    sorted_codes = block_codes[order]
    rows = np.flatnonzero(asked)
    lo = np.searchsorted(sorted_codes, codes[rows], "left")
    hi = np.searchsorted(sorted_codes, codes[rows], "right")
    lengths = hi - lo
    if not lengths.sum():
        return
    row = np.repeat(rows, lengths)
    offset_in = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    column = order[np.repeat(lo, lengths) + offset_in]
    keep = column + offset != source[row]
    row, column = row[keep], column[keep]
    for start in range(0, len(row), BAND_PAIRS):
        r, c = row[start : start + BAND_PAIRS], column[start : start + BAND_PAIRS]
        value = dot64(q[r], vectors[c])
        for i, v, col in zip(r.tolist(), value.tolist(), c.tolist(), strict=True):
            if v > best[i]:
                best[i] = v
                group[i] = weights["rep_reid"][col]


def dot64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products in float64: the exact decision for every comparison."""
    return np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))


def group_weights(metas: list[dict], name: str, offsets: np.ndarray) -> list[dict]:
    """Per block: the group (global position of its first member) of each original, for linkage and for
    re-identification (known people only), and the weight of each column (its group's size at the first
    member, 0 at the others)."""
    digests = [m[name]["digest"] if name in m else np.empty(0, "S16") for m in metas]
    known = [m[name]["known"] if name in m else np.empty(0, bool) for m in metas]
    every, is_known = np.concatenate(digests), np.concatenate(known)
    rep_link, w_link = digest_groups(every, np.arange(len(every)))
    rep_reid, w_reid = np.full(len(every), -1, np.int64), np.zeros(len(every), np.int64)
    at = np.flatnonzero(is_known)
    rep_reid[at], w_known = digest_groups(every[at], at)
    w_reid[at] = w_known
    return [
        {
            "recognizer": name,
            "rep_link": rep_link[a:b],
            "w_link": w_link[a:b],
            "rep_reid": rep_reid[a:b],
            "w_reid": w_reid[a:b],
        }
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    ]


def digest_groups(digests: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the group's first position for each row, the group's size at its first row and 0 elsewhere)."""
    weight = np.zeros(len(digests), np.int64)
    if not len(digests):
        return np.empty(0, np.int64), weight
    _, first, inverse, counts = np.unique(digests, return_index=True, return_inverse=True, return_counts=True)
    weight[first] = counts
    return positions[first][inverse.reshape(-1)].astype(np.int64), weight


def smallest_keys(keys: np.ndarray, levels: np.ndarray, limit: int | None) -> dict[float, list[str]]:
    """Per level (NaN as -1), the `limit` smallest query keys (all levels' first key when uncapped)."""
    found = {}
    tags = np.where(np.isnan(levels), -1.0, levels)
    for level in np.unique(tags):
        mine = np.sort(keys[tags == level].astype(str))
        found[float(level)] = mine[: limit if limit is not None else 1].tolist()
    return found


def may_hold(smallest: dict[float, list[str]], limits: dict | None) -> bool:
    if limits is None:
        return True
    return any(level in limits and keys and keys[0] <= limits[level] for level, keys in smallest.items())


def chosen_queries(keys: np.ndarray, levels: np.ndarray, limits: dict | None) -> np.ndarray:
    if limits is None:
        return np.arange(len(keys))
    tags = np.where(np.isnan(levels), -1.0, levels)
    bound = np.array([limits.get(float(t)) for t in tags], dtype=object)
    return np.flatnonzero([b is not None and k <= b for k, b in zip(keys.tolist(), bound.tolist(), strict=True)])


def identity_labels_of(identities: Location, anon_ids: pa.ChunkedArray) -> dict[str, str]:
    """anon_id -> person for this shard's anon_ids (identities.parquet is sorted by anon_id: a range read)."""
    if "identity" not in storage.read_schema(identities).names or not len(anon_ids):
        return {}
    low, high = pc.min(anon_ids).as_py(), pc.max(anon_ids).as_py()
    table = storage.read_table(
        identities, columns=["anon_id", "identity"], filters=[("anon_id", ">=", low), ("anon_id", "<=", high)]
    )
    return {a: p for a, p in zip(table["anon_id"].to_pylist(), table["identity"].to_pylist(), strict=True) if p}


def identity_codes(keys: np.ndarray, labels: dict[str, str], by_face: bool) -> np.ndarray:
    """Per gallery key: its person's code (a 63-bit hash of the label, the same in every task), or NO_CODE.
    In face-region mode only images with one face have a person (all of an image's faces are in its shard)."""
    image = [k.split("#", 1)[0] for k in keys] if by_face else list(keys)
    faces = Counter(image)
    return np.array(
        [identity_code(labels[a]) if a in labels and (not by_face or faces[a] == 1) else NO_CODE for a in image],
        dtype=np.int64,
    )


def identity_code(label: str) -> int:
    return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "big") >> 1


def face_column(rows: pa.Table) -> np.ndarray | None:
    if "face" not in rows.column_names or rows["face"].null_count == len(rows):
        return None
    return np.array(rows["face"].to_pylist(), dtype=object)


def face_key(anon_id: str, face) -> str:
    return anon_id if face is None else f"{anon_id}#{int(face)}"


def as_matrix(column: pa.ChunkedArray) -> np.ndarray:
    flat = pc.list_flatten(column).to_numpy()
    return flat.reshape(len(column), -1) if len(column) else flat.reshape(0, 0)


def normalised(vectors: np.ndarray, name: str) -> np.ndarray:
    """Rows scaled to norm 1 (float32); a zero or non-finite row has no cosine distance."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    if not (np.isfinite(norms).all() and (norms > 0).all()):
        raise ValueError(f"{name}: embeddings must be finite and nonzero")
    return np.ascontiguousarray((vectors / norms).astype(np.float32))
