"""Per-output random seeds and generators.

Every output (image, level, sample index) gets its own seed, a stable hash of the run seed and those
three values, so an output never depends on batch size, batch mates, worker or order, and a resumed
run reproduces exactly what an uninterrupted one would have written.
"""

from __future__ import annotations

import hashlib
import math

import torch

_SEED_BITS = 63  # a non-negative int64: fits torch.Generator.manual_seed, Parquet and JSON alike


def output_seed(run_seed: int, image_id: str, level: float, sample_index: int = 0) -> int:
    """Return the 63-bit seed of one output, stable across processes, machines and Python versions.

    blake2b over a canonical text encoding; the level is written with 6 decimals so that 0.7 and
    0.7000000000000001 (a float from arithmetic) name the same output.
    """
    if isinstance(run_seed, bool) or not isinstance(run_seed, int):
        raise ValueError(f"run_seed must be an integer, got {run_seed!r}")
    if not isinstance(image_id, str):
        raise ValueError(f"image_id must be a string, got {image_id!r}")
    if isinstance(sample_index, bool) or not isinstance(sample_index, int) or sample_index < 0:
        raise ValueError(f"sample_index must be an integer >= 0, got {sample_index!r}")
    if not math.isfinite(float(level)):
        raise ValueError(f"level must be a finite number, got {level!r}")
    # Fields are length-prefixed so that no two different tuples encode to the same bytes.
    fields = ("boomerang-seed-v1", str(run_seed), image_id, f"{float(level):.6f}", str(sample_index))
    message = b"".join(len(b).to_bytes(8, "big") + b for b in (f.encode("utf-8") for f in fields))
    digest = hashlib.blake2b(message, digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - _SEED_BITS)


def make_generator(seed: int, device: str | torch.device | None = None) -> torch.Generator:
    """Return a CPU ``torch.Generator`` seeded with ``seed``.

    Noise is always drawn on the CPU and then moved to the model's device (diffusers' ``randn_tensor``
    does this when given a CPU generator): CPU draws are the same on every machine, whereas CUDA
    draws depend on the GPU and the torch build. ``device`` is accepted for symmetry and ignored.
    """
    del device  # deliberately CPU, see above
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator
