"""Cost of the exact attack search (evaluation.attacks) on the CPU: time and peak memory.

Random float32 embeddings stand in for a recognizer's: n queries (noisy copies of gallery rows)
against an m-row gallery of dimension d, with 100 byte-identical duplicate rows planted in the
gallery, so that the search takes its duplicate path (one gathered copy of each similarity
chunk), the slower one, as a real dataset with a single repeated photo would. Each configuration
runs in a fresh process, so that its peak is its own: ``peak_mib`` is ru_maxrss above the process's
once the embeddings are built (torch imported, the arrays in memory), i.e. what the search itself
adds on top of the embeddings. ``seconds`` is the median of ``--repeats`` runs.

The default configurations: linkage and re-identification at n = 10^4, m = 10^5, d = 512
(Facenet512's size), and linkage at d = 4096 (VGG-Face's size) with m = 10^4, a tenth of the
gallery: at m = 10^5 the 4096-d gallery alone is 1.6 GB in float32 and the search, linear in m,
about ten times as long. One JSON line per configuration:

    .venv/bin/python bench/attacks.py --repeats 3
    .venv/bin/python bench/attacks.py --one linkage 10000 100000 512 --chunk 1024   # one configuration
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

# --smoke: the same attacks at sizes that run in a second (the gallery still holds the duplicates).
SMOKE_CONFIGS = (("linkage", 200, 1_000, 64), ("reid", 200, 1_000, 64))
CONFIGS = (("linkage", 10_000, 100_000, 512), ("reid", 10_000, 100_000, 512), ("linkage", 10_000, 10_000, 4096))
DUPLICATES = 100


def embeddings(n: int, m: int, d: int, seed: int = 0):
    """float32 gallery and queries, made in float32 (no float64 transient to inflate the baseline)."""
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((m, d), dtype=np.float32)
    gallery[rng.choice(m, DUPLICATES, replace=False)] = gallery[:DUPLICATES]
    true_index = rng.integers(0, m, size=n)
    queries = gallery[true_index]
    queries += rng.standard_normal((n, d), dtype=np.float32)
    # Ten photos per identity, for the re-identification attack.
    identity = np.arange(m) // 10
    return queries, gallery, true_index, identity


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one(attack: str, n: int, m: int, d: int, chunk: int | None, repeats: int) -> dict:
    import torch

    from evaluation import attacks

    torch.set_num_threads(os.cpu_count() or 1)
    queries, gallery, true_index, identity = embeddings(n, m, d)
    baseline = max_rss_mib()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if attack == "linkage":
            ranks = attacks.rank_of_true(queries, gallery, true_index, chunk=chunk)
        else:
            ranks = attacks.reid_rank(queries, gallery, identity, true_index, chunk=chunk)
        times.append(time.perf_counter() - start)
    rates = attacks.hit_rates(ranks)
    return {
        "attack": attack,
        "n_queries": n,
        "gallery": m,
        "dim": d,
        "dtype": "float32",
        "chunk": chunk or max(1, attacks.CHUNK_ITEMS // m),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "seconds": round(statistics.median(times), 3),
        "seconds_all": [round(t, 3) for t in times],
        "queries_per_s": round(n / statistics.median(times), 1),
        "embeddings_mib": round((queries.nbytes + gallery.nbytes) / 2**20, 1),
        "peak_mib": round(max_rss_mib() - baseline, 1),
        "hit_at_1": rates["hits"][1]["rate"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=None, help="queries per chunk (default: the library's)")
    parser.add_argument("--one", nargs=4, metavar=("ATTACK", "N", "M", "D"), help="run one configuration here")
    args = common.parse(parser, {"repeats": 1})
    if args.one:
        attack, n, m, d = args.one[0], *map(int, args.one[1:])
        print(json.dumps(one(attack, n, m, d, args.chunk, args.repeats)), flush=True)
        return
    for attack, n, m, d in SMOKE_CONFIGS if args.smoke else CONFIGS:
        argv = [sys.executable, __file__, "--one", attack, str(n), str(m), str(d), "--repeats", str(args.repeats)]
        if args.chunk:
            argv += ["--chunk", str(args.chunk)]
        subprocess.run(argv, check=True)


if __name__ == "__main__":
    main()
