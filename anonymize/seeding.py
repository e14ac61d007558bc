"""Per-output random seeds and generators, keyed by the run's secret.

Every output (image, level, sample index[, face index]) gets its own seed, an HMAC of the run's secret
over the run seed and those values, so an output never depends on batch size, batch mates, worker or
order, and a resumed run reproduces exactly what an uninterrupted one would have written.

The key is what makes a release safe: with an unkeyed hash anyone holding the originals and the public
settings could regenerate every output and match released files to their sources byte for byte.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_SEED_BITS = 63  # a non-negative int64: fits torch.Generator.manual_seed, Parquet and JSON alike
MIN_SECRET_BYTES = 16


def output_seed(
    secret: bytes,
    run_seed: int,
    image_id: str,
    level: float,
    sample_index: int = 0,
    face_index: int | None = None,
) -> int:
    """Return the 63-bit seed of one output, stable across processes, machines and Python versions.

    HMAC-SHA256 keyed by ``secret`` over a canonical, length-prefixed encoding of the other values; the
    level is written with 6 decimals so that 0.7 and 0.7000000000000001 (a float from arithmetic) name
    the same output. ``face_index`` is for region mode, one generator per face.
    """
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"secret must be at least {MIN_SECRET_BYTES} random bytes (the run's private key)")
    if isinstance(run_seed, bool) or not isinstance(run_seed, int):
        raise ValueError(f"run_seed must be an integer, got {run_seed!r}")
    if not isinstance(image_id, str):
        raise ValueError(f"image_id must be a string, got {type(image_id).__name__}")
    for name, value in (("sample_index", sample_index), ("face_index", face_index)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if not math.isfinite(float(level)):
        raise ValueError(f"level must be a finite number, got {level!r}")
    fields = ["boomerang-seed-v2", str(run_seed), image_id, f"{float(level):.6f}", str(sample_index)]
    if face_index is not None:
        fields.append(f"face={face_index}")
    # Fields are length-prefixed so that no two different tuples encode to the same bytes.
    message = b"".join(len(b).to_bytes(8, "big") + b for b in (f.encode("utf-8") for f in fields))
    digest = hmac.new(bytes(secret), message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _SEED_BITS)


def make_generator(seed: int, device: str | torch.device | None = None) -> torch.Generator:
    """Return a CPU ``torch.Generator`` seeded with ``seed``.

    Noise is always drawn on the CPU and then moved to the model's device (diffusers' ``randn_tensor``
    does this when given a CPU generator): CPU draws are the same on every machine, whereas CUDA
    draws depend on the GPU and the torch build. ``device`` is accepted for symmetry and ignored.
    """
    del device  # deliberately CPU, see above
    import torch  # here: the driver computes seeds and names without loading torch

    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator
