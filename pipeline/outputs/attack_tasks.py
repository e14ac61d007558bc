"""The linkage and re-identification attacks as Ray tasks over shards: the driver never holds an embedding.

pipeline.outputs.linkage_attack defines the attacks (ranks of evaluation.attacks: 1 + the originals strictly
closer than the answer, ties for the attacker). Here they run on the cluster, in two kinds of task:

1. one `_prepare` task per shard of private/embeddings (its compacted file and batch parts: every row of an
   anon_id is in its shard) reads the shard and puts into the object store, per recognizer, the shard's block
   of the gallery (each original face once, normalised, float32). The driver gets back only what it needs
   to count: a 16-byte digest per original (its bytes, to find byte-identical originals across shards), per
   identity code how many originals, and per level the shard's smallest query keys (the capped sample);
2. one `_rank` task per shard of queries (read from the shard's files: every output's embedding, or those the
   capped attack asks) ranks them against every gallery block, fetched one block at a time
   (on a GPU where the cluster has them, in float16, else float32 on the CPU); the driver merges the ranks.

Exact ranks across blocks. A gallery split across blocks is ranked as one: every comparison is decided as
the float64 dot product of the normalised vectors would decide it. The fast product (float32, or float16 on
a GPU) decides every pair outside a band of +-eps around the answer's similarity, where eps bounds its
rounding error (`error_bound`); pairs inside the band are recomputed in float64. Ties count for the
attacker: byte-identical originals (same digest) form one group, counted once per member at the group's
first member, and the answer's own group (its copies tie with it exactly) is never counted as ahead.

Without a Ray runtime (`boomerang report` on a laptop), pipeline.outputs.linkage_attack runs its in-process search.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.folder import storage
from pipeline.folder.layout import RunLayout
from pipeline.folder.storage import Location
from pipeline.outputs.attack_math import (
    NO_CODE,
    as_matrix,
    best_member,
    chosen_queries,
    count_ahead,
    dot64,
    face_column,
    face_key,
    group_weights,
    identity_codes,
    identity_labels_of,
    may_hold,
    normalised,
    smallest_keys,
)
from pipeline.tables.read import shard_sources
from pipeline.tables.shards import batch_parts, shard_files, shard_of_name

# One chunk of queries x one gallery block at most this many similarities (64 MiB of float32).
CHUNK_ITEMS = 2**24


def available() -> bool:
    """A Ray runtime this process is connected to: the attacks run as tasks on it."""
    try:
        import ray
    except ImportError:  # pragma: no cover - Ray is a dependency
        return False
    return ray.is_initialized()


@dataclass
class Ranked:
    """The ranks of one recognizer's attacked queries (every array one entry per query)."""

    recognizer: str
    anon_id: np.ndarray
    level: np.ndarray
    face: np.ndarray | None
    linkage: np.ndarray  # int64 ranks among all originals
    gallery: int  # originals (faces) in the gallery
    reid: np.ndarray | None = None  # float64 ranks, NaN where the person has no other photo
    reid_chance: np.ndarray | None = None  # per query: the person's other photos over the other photos
    reid_gallery: int = 0
    people_attackable: int = 0
    people_single: int = 0
    reid_asked: np.ndarray | None = None  # bool: queries whose original's person is known


def sharded_ranks(
    layout: RunLayout, max_queries: int | None, reid: bool, within: int | None = None, precision: str | None = None
) -> list[Ranked]:
    """Per recognizer, the attacked queries' ranks (see the module docstring).

    `max_queries`: per level, the queries with the smallest keys (None: every query). `within`: keep only
    queries whose linkage rank is at most this (the gate's rule: the driver receives only those). `precision`:
    the fast product's, "float16" or "float32" (default: float16 on a GPU, float32 on a CPU)."""
    import ray

    groups = source_groups(layout.embeddings)
    if not groups:
        return []
    identities = layout.identities if reid and layout.identities.is_file() else None
    prepare = _remote(_prepare, num_returns=2, num_cpus=1)
    refs = [prepare.remote(g, identities, max_queries) for g in groups]
    # The shards' metadata one at a time: the capped sample's keys are merged into a running top-`limit`.
    metas, smallest = [], {}
    for ref in refs:
        meta = ray.get(ref[0])
        for name, found in meta.items():
            mine = smallest.setdefault(name, {})
            for level, keys in found["smallest"].items():
                mine[level] = heapq.nsmallest(max_queries, mine.get(level, []) + keys) if max_queries else []
            found["smallest"] = {level: keys[:1] for level, keys in found["smallest"].items()}
        metas.append(meta)
    recognizers = sorted({name for meta in metas for name in meta})
    gpus = ray.cluster_resources().get("GPU", 0)
    rank = _remote(_rank, num_cpus=1, num_gpus=1 if gpus >= 1 else 0)
    found = []
    for name in recognizers:
        sizes = [meta[name]["n_gallery"] if name in meta else 0 for meta in metas]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        weight_refs = [ray.put(w) for w in group_weights(metas, name, offsets)]
        limits = None if max_queries is None else {lv: k[-1] for lv, k in smallest.get(name, {}).items() if k}
        codes = Counter()
        for meta in metas:
            if name in meta:
                codes.update(meta[name]["codes"])
        do_reid = reid and sum(codes.values()) >= 2
        blocks = [(b, refs[b][1], weight_refs[b], int(offsets[b])) for b in range(len(groups)) if sizes[b]]
        tasks = [
            rank.remote(name, groups[b], b, blocks, limits, do_reid, within, precision)
            for b, meta in enumerate(metas)
            if name in meta and may_hold(meta[name]["smallest"], limits)
        ]
        parts = [p for p in ray.get(tasks) if len(p["anon_id"])]
        found.append(_merge(name, parts, int(offsets[-1]), codes if do_reid else None))
    return found


_REMOTE: dict = {}


def _remote(function, **options):
    """The Ray remote function of `function` (registered once per process) with these options."""
    import ray

    if function.__name__ not in _REMOTE:
        _REMOTE[function.__name__] = ray.remote(function)
    return _REMOTE[function.__name__].options(**options)


def source_groups(folder: Location) -> list[list[Location]]:
    """The files of a table folder grouped by shard (its compacted file and batch parts); parts named otherwise
    (written before shards) are one group."""
    if not folder.is_dir():
        return []
    shards = set(shard_files(folder)) | {shard_of_name(p.name) for p in batch_parts(folder)}
    groups = [shard_sources(folder, shard) for shard in sorted(shards)]
    others = sorted(p for p in folder.glob("part-*.parquet") if shard_of_name(p.name) is None)
    return [g for g in groups if g] + ([others] if others else [])


def error_bound(dims: int, dtype: str) -> float:
    """A bound on |fast dot product - exact one| for vectors of norm <= 1 + 1e-6.

    float32 products of float32 inputs: the sum's rounding, d * 2**-24 (any order of summation). float16 (a
    GPU; accumulated in float32): each input rounded (relative 2**-11, plus 2**-25 absolute below float16's
    normal range), the sum, and the float16 result (2**-11, |similarity| <= 1).
    """
    norm = 1.0 + 1e-6
    if dtype == "float32":
        return 1.01 * dims * 2**-24 * norm**2 + 1e-9
    unit = 2**-11
    inputs = (2 * unit + unit**2) * norm**2 + 2 * math.sqrt(dims) * 2**-25 * norm
    return 1.01 * (inputs + dims * 2**-24 * norm**2) + unit + 1e-9


def _read_shard(paths: Sequence[Location], columns: list[str]) -> pa.Table | None:
    tables = []
    for path in paths:
        names = storage.read_schema(path).names
        tables.append(storage.parquet_file(path).read(columns=[c for c in columns if c in names]))
    return pa.concat_tables(tables, promote_options="default") if tables else None


def _recognizer_rows(table: pa.Table, name: str) -> dict:
    """One recognizer's rows of a shard: ids, faces, keys, levels, and each row's original in the shard's
    gallery (its keys sorted, each once)."""
    rows = table.filter(pc.equal(table["recognizer"], name))
    ids = np.asarray(rows["anon_id"].to_pylist(), dtype=object)
    faces = face_column(rows)
    keys = ids if faces is None else np.array([face_key(a, f) for a, f in zip(ids, faces, strict=True)], dtype=object)
    gallery_keys, first, source = np.unique(keys, return_index=True, return_inverse=True)
    levels = rows["level"].to_numpy(zero_copy_only=False).astype(np.float64)
    return {"rows": rows, "anon_id": ids, "face": faces, "keys": keys, "gallery_keys": gallery_keys,
            "first": first, "source": source.reshape(-1).astype(np.int64), "level": levels}  # fmt: skip


def _prepare(paths: Sequence[Location], identities: Location | None, max_queries: int | None):
    """(meta, gallery) of one shard, each a dict by recognizer (see the module docstring). The queries stay in
    the files: the ranking task reads its shard again, only the queries it asks."""
    table = _read_shard(paths, ["anon_id", "level", "face", "recognizer", "original"])
    meta, gallery = {}, {}
    if table is None or not len(table):
        return meta, gallery
    labels = identity_labels_of(identities, table["anon_id"]) if identities is not None else {}
    for name in pc.unique(table["recognizer"]).to_pylist():
        found = _recognizer_rows(table, name)
        originals = normalised(as_matrix(found["rows"]["original"].take(found["first"])), "gallery")
        codes = identity_codes(found["gallery_keys"], labels, found["face"] is not None)
        meta[name] = {
            "n_gallery": len(originals),
            "digest": np.array([hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in originals], "S16"),
            "known": codes != NO_CODE,
            "codes": Counter(codes[codes != NO_CODE].tolist()),
            "smallest": smallest_keys(found["keys"], found["level"], max_queries),
        }
        gallery[name] = {"vectors": originals, "codes": codes}
    return meta, gallery


def _rank(
    name: str,
    paths: Sequence[Location],
    block: int,
    blocks: list,
    limits: dict | None,
    reid: bool,
    within: int | None,
    precision: str | None = None,
):
    """Ranks of one shard's queries (those the cap chose) against every gallery block."""
    import ray
    import torch

    queries = _recognizer_rows(_read_shard(paths, ["anon_id", "level", "face", "recognizer", "anonymized"]), name)
    chosen = chosen_queries(queries["keys"], queries["level"], limits)
    q = normalised(as_matrix(queries["rows"]["anonymized"].take(chosen)), "queries")
    source = queries["source"][chosen]
    device, dtype, precision = _device_and_precision(ray, torch, precision)
    eps = error_bound(q.shape[1] if q.size else 1, precision)
    own = _block_arrays(ray, blocks, block)
    own_vectors, own_codes, own_weights, own_offset = own
    # Linkage: the answer is the own original; its group (its byte-identical copies) never counts as ahead.
    answer = dot64(q, own_vectors[source])
    answer_group = own_weights["rep_link"][source]
    n = len(q)
    link_count = np.zeros(n, dtype=np.int64)
    reid_best = np.full(n, -np.inf)
    reid_group = np.full(n, -1, dtype=np.int64)
    query_codes = own_codes[source]
    source_global = own_offset + source
    asked = (query_codes != NO_CODE) if reid else np.zeros(n, dtype=bool)
    if asked.any():  # first pass: each query's closest other photo of its person, over every block
        for b, gallery_ref, weight_ref, offset in blocks:
            vectors, codes, weights, _ = _block_arrays(ray, [(b, gallery_ref, weight_ref, offset)], b)
            best_member(q, query_codes, asked, source_global, vectors, codes, weights, offset, reid_best, reid_group)
    attackable = asked & np.isfinite(reid_best)
    reid_count = np.zeros(n, dtype=np.int64)
    q_torch = torch.as_tensor(q).to(device=device, dtype=dtype)
    for b, gallery_ref, weight_ref, offset in blocks:
        vectors, _, weights, _ = _block_arrays(ray, [(b, gallery_ref, weight_ref, offset)], b)
        g = torch.as_tensor(vectors).to(device=device, dtype=dtype)
        chunk = max(1, CHUNK_ITEMS // max(1, len(vectors)))
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            similarity = q_torch[start:stop] @ g.T
            rows = slice(start, stop)
            link_count[rows] += count_ahead(
                similarity, answer[rows], answer_group[rows] - offset, weights["w_link"], q[rows], vectors, eps
            )
            if attackable[rows].any():
                mine = np.flatnonzero(attackable[rows])
                reid_count[start + mine] += count_ahead(
                    similarity[torch.as_tensor(mine, device=similarity.device)],
                    reid_best[start + mine],
                    reid_group[start + mine] - offset,
                    weights["w_reid"],
                    q[start + mine],
                    vectors,
                    eps,
                )
    if attackable.any():
        # The source photo leaves the gallery: its group counted it where the group is ahead of the answer.
        source_group = own_weights["rep_reid"][source]
        ahead = attackable & (source_group != reid_group) & (dot64(q, own_vectors[source]) > reid_best)
        reid_count -= ahead
    linkage = 1 + link_count
    reid_ranks = np.where(attackable, 1 + reid_count, np.nan)
    keep = np.ones(n, dtype=bool) if within is None else linkage <= within
    faces = queries["face"]
    return {
        "anon_id": queries["anon_id"][chosen][keep],
        "level": queries["level"][chosen][keep],
        "face": None if faces is None else faces[chosen][keep],
        "linkage": linkage[keep],
        "reid": reid_ranks[keep] if reid else None,
        "asked": asked[keep],
        "codes": query_codes[keep],
    }


def _device_and_precision(ray, torch, precision: str | None):
    """The task's device (a GPU Ray gave it, else the CPU), the product's dtype, and the precision whose rounding
    bound (`error_bound`) holds for it."""
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    precision = precision or ("float16" if device == "cuda" else "float32")
    dtype = getattr(torch, precision)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        precision = "float16"  # TF32 rounds the inputs to 10 bits, as float16 does: its bound holds
    return device, dtype, precision


def _block_arrays(ray, blocks: list, block: int):
    """(vectors, codes, weights, offset) of one gallery block (fetched from the object store)."""
    for b, gallery_ref, weight_ref, offset in blocks:
        if b == block:
            gallery, weights = ray.get([gallery_ref, weight_ref])
            name = weights["recognizer"]
            return gallery[name]["vectors"], gallery[name]["codes"], weights, offset
    raise KeyError(block)


def _merge(name: str, parts: list[dict], gallery: int, codes: Counter | None) -> Ranked:
    def cat(key, dtype=None):
        arrays = [p[key] for p in parts]
        return np.concatenate(arrays) if arrays else np.empty(0, dtype)

    faces = None if not parts or parts[0]["face"] is None else cat("face")
    ranked = Ranked(name, cat("anon_id", object), cat("level", np.float64), faces, cat("linkage", np.int64), gallery)
    if codes is not None:
        known = sum(codes.values())
        query_codes = cat("codes", np.int64)
        others = np.array([codes.get(c, 0) - 1 for c in query_codes.tolist()], dtype=np.float64)
        ranked.reid = cat("reid", np.float64)
        ranked.reid_asked = cat("asked", bool)
        ranked.reid_chance = others / (known - 1)
        ranked.reid_gallery = known
        ranked.people_attackable = sum(1 for v in codes.values() if v >= 2)
        ranked.people_single = sum(1 for v in codes.values() if v == 1)
    return ranked
