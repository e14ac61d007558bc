"""Re-identification attacks on anonymized faces: exact nearest-neighbour ranks. Pure array code.

Two attackers, both ranking gallery embeddings by deepface's cosine distance (``1 - cos``, the
formula of :func:`evaluation.distances.cosine_distance`) from each query (an anonymized output's
embedding):

- linkage (:func:`rank_of_true`): the attacker holds the original dataset; the answer is the
  output's own original;
- re-identification (:func:`reid_rank`): the attacker holds other photos of the people; a hit is a
  gallery photo of the same identity, the output's own source photo left out of the gallery.

A rank is 1 + the number of gallery items strictly closer to the query than the answer. Ties count
for the attacker: an item exactly as close as the answer is not ahead of it. That makes the hit
rates upper bounds on what a ranking attacker achieves, the conservative side for a privacy report.
Exact ties are guaranteed for byte-identical gallery embeddings (they share one computed
similarity); other mathematically equal distances may differ in the last bit, like any float code.

The search is exact (no approximate index) and chunked: one chunk of queries against the whole
gallery at a time, so memory is a few chunk x gallery matrices, never queries x gallery.
:func:`hit_rates` turns ranks into hit@k rates with Wilson intervals; :func:`chance_rate` and
:func:`reid_chance_rate` give the rates of an attacker who ranks at random, for the chance line.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from evaluation.summary import wilson_interval

# Default chunk: as many queries as keep one chunk x gallery float32 matrix at 64 MiB (2**24 items).
# The search adds about 2.5x that to the embeddings at its peak (the matrix, a mask of it, buffers;
# bench/attacks.py), whatever the gallery's size.
CHUNK_ITEMS = 2**24


def rank_of_true(queries, gallery, true_index, chunk: int | None = None, device: str = "cpu") -> np.ndarray:
    """Linkage attack: the rank of each query's own original among all originals.

    ``queries`` is (n, d), one anonymized output per row; ``gallery`` is (m, d), the originals;
    ``true_index`` (n,) is the row of ``gallery`` each query was made from. Returns (n,) int64 ranks
    in 1..m: 1 + the number of originals strictly closer to the query than its own original (ties
    count for the attacker, see the module docstring). Rank 1 for every query is 100% hit@1.

    ``chunk`` queries are searched at a time (default: ``CHUNK_ITEMS // m``, at least 1); the ranks
    do not depend on it. ``device`` is where torch does the matrix products ("cpu", "cuda:0", ...).
    Embeddings are compared in float32 when both arrays are float32, else in float64; they must be
    finite and nonzero (a zero vector has no cosine distance). A C-contiguous gallery of that
    dtype is not copied on the CPU.
    """
    queries, gallery = _embeddings(queries, gallery)
    true_index = _indices(true_index, len(queries), len(gallery), "true_index")
    ranks = np.empty(len(queries), dtype=np.int64)
    for start, stop, similarity in _similarity_chunks(queries, gallery, chunk, device):
        rows = torch.arange(stop - start, device=similarity.device)
        answer = torch.as_tensor(true_index[start:stop], device=similarity.device)
        # The answer's similarity is read from the same matrix row that it is compared with, so it
        # and its byte-identical duplicates are one number: they tie exactly.
        ranks[start:stop] = 1 + _count_above(similarity, similarity[rows, answer])
    return ranks


def reid_rank(
    queries, gallery, gallery_identity, query_source_index, chunk: int | None = None, device: str = "cpu"
) -> np.ndarray:
    """Re-identification attack: the rank of the closest other photo of the query's person.

    ``queries`` is (n, d), one anonymized output per row; ``gallery`` is (m, d), the originals, with
    ``gallery_identity`` (m,) their identity labels (ints or strings, compared by equality);
    ``query_source_index`` (n,) is the row of ``gallery`` each query was made from. For each query
    the gallery is every original except that source photo; the rank is 1 + the number of those
    strictly closer to the query than the closest one with the source's identity (ties count for
    the attacker). Another byte-identical copy of the source photo stays in the gallery: it is
    another photo as far as the labels say.

    Returns (n,) float64 ranks, NaN where the source's identity has no other photo (the query
    cannot be attacked this way): NaN, not a sentinel number, so that no mean or ``rank <= k`` test
    counts it as a rank; :func:`hit_rates` counts those queries apart. ``chunk``, ``device`` and
    the embeddings as in :func:`rank_of_true`.
    """
    queries, gallery = _embeddings(queries, gallery)
    codes, per_identity = _identity_codes(gallery_identity, len(gallery))
    source = _indices(query_source_index, len(queries), len(gallery), "query_source_index")
    # Gallery rows grouped by identity: members of identity i are by_identity[first[i]:][:per_identity[i]].
    by_identity = np.argsort(codes, kind="stable")
    first = np.cumsum(per_identity) - per_identity
    ranks = np.full(len(queries), np.nan)
    for start, stop, similarity in _similarity_chunks(queries, gallery, chunk, device):
        own = source[start:stop]
        # The source photo leaves the gallery: at -inf it is neither the answer nor ahead of it.
        rows = torch.arange(stop - start, device=similarity.device)
        similarity[rows, torch.as_tensor(own, device=similarity.device)] = -math.inf
        # The best similarity over each query's identity: gathered at its members' columns only,
        # a few per query, rather than masking the whole chunk x gallery matrix.
        identity = codes[own]
        lengths = per_identity[identity]
        row = np.repeat(np.arange(stop - start), lengths)
        offset = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        column = by_identity[np.repeat(first[identity], lengths) + offset]
        row, column = (torch.as_tensor(x, device=similarity.device) for x in (row, column))
        best = torch.full((stop - start,), -math.inf, dtype=similarity.dtype, device=similarity.device)
        best.scatter_reduce_(0, row, similarity[row, column], "amax")
        ranks[start:stop] = 1 + _count_above(similarity, best)
    # Without another photo of the identity the best stayed -inf (the source's): not attackable.
    ranks[per_identity[codes[source]] < 2] = np.nan
    return ranks


def hit_rates(ranks, ks: Sequence[int] = (1, 5)) -> dict:
    """hit@k rates of attack ranks, with 95% Wilson intervals.

    ``ranks`` holds ranks from :func:`rank_of_true` or :func:`reid_rank`: integers >= 1, or NaN
    (None) for a query that could not be attacked; those are counted apart and left out of every
    rate. Returns::

        {"n_attacked": n, "n_not_attackable": m,
         "hits": {k: {"n_hits": h, "rate": h / n, "ci_low": ..., "ci_high": ...}, ...}}

    with ``rate`` and the interval NaN when ``n`` is 0.
    """
    ranks = np.asarray(ranks, dtype=np.float64).reshape(-1)
    attacked = ranks[~np.isnan(ranks)]
    if np.any(attacked < 1) or np.any(attacked != np.floor(attacked)):
        raise ValueError("hit_rates: ranks must be integers >= 1, or NaN for a query that was not attackable")
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"hit_rates: ks must be integers >= 1, got {ks!r}")
    n = len(attacked)
    hits = {}
    for k in ks:
        n_hits = int((attacked <= k).sum())
        low, high = wilson_interval(n_hits, n)
        hits[int(k)] = {"n_hits": n_hits, "rate": n_hits / n if n else math.nan, "ci_low": low, "ci_high": high}
    return {"n_attacked": n, "n_not_attackable": len(ranks) - n, "hits": hits}


def chance_rate(gallery_size: int, k: int) -> float:
    """hit@k of a linkage attacker who ranks the gallery at random: ``min(k, m) / m``."""
    if gallery_size < 1 or k < 1:
        raise ValueError(f"chance_rate: need gallery_size >= 1 and k >= 1, got {gallery_size!r} and {k!r}")
    return min(k, gallery_size) / gallery_size


def reid_chance_rate(gallery_identity, query_source_index, k: int) -> float:
    """Expected hit@k of a re-identification attacker who ranks at random, over attackable queries.

    A query whose identity has ``s`` other photos in a gallery of ``g = m - 1`` (its source left
    out) is hit at random with probability ``1 - C(g - s, k) / C(g, k)``: some of the first ``k``
    is one of the ``s``. The mean over queries with ``s >= 1``; NaN when there are none.
    """
    if k < 1:
        raise ValueError(f"reid_chance_rate: k must be >= 1, got {k!r}")
    codes, per_identity = _identity_codes(gallery_identity, None)
    source = np.asarray(query_source_index)
    source = _indices(source, len(source), len(codes), "query_source_index")
    others = per_identity[codes[source]] - 1
    others = others[others >= 1]
    if not len(others):
        return math.nan
    g = len(codes) - 1
    miss = {s: _all_misses(g, s, k) for s in np.unique(others).tolist()}
    return float(np.mean([1.0 - miss[s] for s in others.tolist()]))


def _all_misses(g: int, s: int, k: int) -> float:
    # C(g - s, k) / C(g, k) as a product of k ratios: the big binomials themselves overflow floats.
    if k > g - s:
        return 0.0
    return math.prod((g - s - i) / (g - i) for i in range(k))


def _similarity_chunks(
    queries: np.ndarray, gallery: np.ndarray, chunk: int | None, device: str
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, stop, cosine similarities of queries[start:stop] to every gallery row), chunk by chunk.

    Each yielded (stop - start, m) tensor is fresh; callers may change it. Byte-identical gallery
    rows get the very same similarity value.
    """
    if chunk is None:
        chunk = max(1, CHUNK_ITEMS // len(gallery))
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    if queries.dtype == np.float32 and torch.get_float32_matmul_precision() != "highest":
        # "high"/"medium" let torch multiply float32 in TF32/bfloat16 (about 3 digits): ranks
        # would no longer be exact.
        raise RuntimeError(
            "exact ranks need float32 matrix products in full precision: "
            "torch.set_float32_matmul_precision('highest'), or pass float64 embeddings"
        )
    duplicate, representative = (torch.as_tensor(x, device=device) for x in _duplicate_rows(gallery))
    # The gallery as it is (shared, not copied, on the CPU); its norms divide the products instead
    # of a normalized copy, which would double the memory of a large gallery.
    with warnings.catch_warnings():
        # A read-only gallery (np.load(..., mmap_mode="r")) is fine: it is only read.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        g = torch.as_tensor(gallery, device=device)
    norms = torch.linalg.vector_norm(g, dim=1)
    _check_norms(norms.cpu().numpy(), "gallery")
    query_norms = np.linalg.norm(queries, axis=1, keepdims=True)
    _check_norms(query_norms, "queries")
    for start in range(0, len(queries), chunk):
        stop = min(start + chunk, len(queries))
        q = torch.as_tensor(queries[start:stop] / query_norms[start:stop], device=device)
        similarity = q @ g.T
        similarity /= norms
        if len(duplicate):
            # Copies take their representative's value: BLAS may sum two equal columns in
            # different orders (vector tails, alignment), which could break a tie by one bit.
            similarity[:, duplicate] = similarity[:, representative]
        yield start, stop, similarity


def _count_above(similarity: torch.Tensor, threshold: torch.Tensor) -> np.ndarray:
    """Per row, how many entries of ``similarity`` are strictly above that row's ``threshold``."""
    if similarity.device.type == "cpu":
        # numpy's compare-and-count is about 5x torch's (bool sum) on the CPU, a third of the search.
        return np.count_nonzero(similarity.numpy() > threshold.numpy()[:, None], axis=1)
    return (similarity > threshold.unsqueeze(1)).sum(dim=1).cpu().numpy()


def _duplicate_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows that repeat an earlier row byte for byte, the first row of each one's group)."""
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).reshape(-1)
    # Stable: within a group of equal rows the smallest index comes first.
    order = np.argsort(rows, kind="stable")
    same_as_previous = np.zeros(len(rows), dtype=bool)
    # Neighbours compared a block at a time: the block's rows are copied, not the whole gallery.
    block = max(1, 2**24 // rows.itemsize)
    for start in range(1, len(rows), block):
        stop = min(start + block, len(rows))
        same_as_previous[start:stop] = rows[order[start:stop]] == rows[order[start - 1 : stop - 1]]
    position = np.arange(len(rows))
    group_start = np.maximum.accumulate(np.where(same_as_previous, 0, position))
    return order[same_as_previous], order[group_start[same_as_previous]]


def _embeddings(queries, gallery) -> tuple[np.ndarray, np.ndarray]:
    queries = np.asarray(queries)
    gallery = np.asarray(gallery)
    # float32 only when both are: mixing would round the float64 side.
    dtype = np.float32 if queries.dtype == gallery.dtype == np.float32 else np.float64
    queries = np.ascontiguousarray(queries, dtype=dtype)
    gallery = np.ascontiguousarray(gallery, dtype=dtype)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1] or 0 in gallery.shape:
        raise ValueError(f"queries (n, d) and gallery (m, d) with m, d >= 1, got {queries.shape} and {gallery.shape}")
    return queries, gallery


def _check_norms(norms, name: str) -> None:
    # A NaN or inf entry makes the norm NaN or inf, a zero vector makes it 0; checked on the norms,
    # which are needed anyway, rather than on a gallery-sized isfinite() mask. A NaN similarity is
    # never "strictly closer": a NaN answer would come out at rank 1.
    norms = np.asarray(norms)
    if not (np.isfinite(norms).all() and (norms > 0).all()):
        raise ValueError(f"{name}: embeddings must be finite and nonzero")


def _indices(index, n: int, m: int, name: str) -> np.ndarray:
    index = np.asarray(index)
    if index.shape != (n,) or (n and index.dtype.kind not in "iu"):
        raise ValueError(f"{name}: {n} integer indices expected, got shape {index.shape} and dtype {index.dtype}")
    index = index.astype(np.int64)
    if n and (index.min() < 0 or index.max() >= m):
        raise ValueError(f"{name}: indices must be in 0..{m - 1}")
    return index


def _identity_codes(labels, m: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(code per gallery row, number of rows per code) for identity labels."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or (m is not None and len(labels) != m) or not len(labels):
        raise ValueError(f"gallery_identity: one label per gallery row expected, got shape {labels.shape}")
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return codes.reshape(-1), counts
