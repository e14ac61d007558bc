"""The run's secret: the key of every output name and every output's random seed.

Made once per run folder (32 random bytes, hex in private/secret), reused on resume, and checked on
every start. Without it nobody can regenerate an output or compute an output name from a file name,
even with the originals and every public setting. `--secret-file` reuses another run's secret, to
reproduce that run elsewhere. A folder that already has outputs never gets a new secret silently: a new
key would redo every image under new names and orphan the old ones.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from anonymize.seeding import MIN_SECRET_BYTES, output_seed
from pipeline.folder.layout import OutputError, RunLayout, write_private_bytes
from pipeline.folder.read_back import write_bytes_checked

SECRET_BYTES = 32


def parse_secret(text: str, where: str) -> bytes:
    """The secret in a secret file's text (hex); one-line OutputError when it is missing or short."""
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        value = b""
    if len(value) < MIN_SECRET_BYTES:
        raise OutputError(
            f"{where} does not hold a run secret (need at least {MIN_SECRET_BYTES} bytes as hex, "
            f"found {len(text.strip())} characters)"
        )
    return value


def load_secret(layout: RunLayout, secret_file: str | None = None) -> bytes:
    """The run's secret: the one in private/, else `secret_file`'s, else a fresh one (written 0600)."""
    given = _read_given(secret_file) if secret_file else None
    path = layout.secret_file
    if path.exists():
        restore = "restore private/secret from a backup of this run (or pass --overwrite to start afresh)"
        try:
            stored = parse_secret(path.read_text(encoding="ascii", errors="replace"), f"{path}")
        except OutputError as err:
            raise OutputError(f"{err}: {restore}") from None
        if given is not None and given != stored:
            raise OutputError(
                f"--secret-file differs from the secret of the run in {layout.root}; "
                "use another --out to reproduce that run, or drop --secret-file to resume this one"
            )
        return stored
    if layout.has_outputs():
        if given is None:
            raise OutputError(
                f"{layout.root} has outputs but its secret private/secret is missing: restore it from a backup "
                "(or pass --secret-file with that run's secret), or pass --overwrite to start afresh"
            )
        # The recovery the line above advises: the given secret becomes the folder's, if its names agree.
        _check_names(layout, given)
    value = given if given is not None else secrets.token_bytes(SECRET_BYTES)
    write_bytes_checked(write_private_bytes, path, value.hex().encode("ascii") + b"\n")  # read back: never lost
    return value


def _check_names(layout: RunLayout, secret: bytes) -> None:
    """Refuse a secret under which the folder's recorded outputs would have other names (another run's)."""
    from pipeline.folder import storage

    if not layout.identities.exists():
        return  # no names recorded to check against: the given secret is taken at its word
    table = storage.read_table(layout.identities)
    for row in table.slice(0, 1).to_pylist():
        key = output_key(row["image_id"], int(row.get("sample") or 0))
        if anon_id(secret, key) != row["anon_id"]:
            raise OutputError(
                f"--secret-file is not the secret of the run in {layout.root} (the names of its outputs do not "
                "derive from it): pass that run's own private/secret, or --overwrite to start afresh"
            )


def _read_given(secret_file: str) -> bytes:
    path = Path(secret_file).expanduser()
    if not path.is_file():
        raise OutputError(f"--secret-file {secret_file!r} does not exist (it is a run's private/secret)")
    return parse_secret(path.read_text(encoding="ascii", errors="replace"), f"--secret-file {secret_file!r}")


def output_key(image_id: str, sample: int = 0) -> str:
    """What names one output of an image: the image id for sample 0 (so `--samples 1` names outputs as ever),
    the id and the sample index for the others (`--samples K`). Only ever hashed (`anon_id`), never shown."""
    return image_id if sample == 0 else f"{image_id}\x00sample={sample}"


def sample_of_key(key: str) -> tuple[str, int]:
    """(image id, sample) of an `output_key` made with --samples K > 1 (the inverse of `output_key`)."""
    image_id, mark, sample = key.rpartition("\x00sample=")
    return (image_id, int(sample)) if mark and sample.isdigit() else (key, 0)


def anon_id(secret: bytes, image_id: str) -> str:
    """Pseudonymous output name: a keyed hash of the image id (never the file name, which may be a person's)."""
    return hmac.new(secret, image_id.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


# Workers never hold the secret: the driver derives, per output, its seed (whole-image mode, the same
# anonymize.output_seed as ever) and a sub-key from which a worker derives the seed of each face (face-region
# mode) or tile (enhance), whose count only the worker learns. A job on a shared cluster that reads Ray's
# objects learns the seeds of the outputs it sees, never a key to any other output or name. The scheme's name,
# recorded in run.json, is pipeline.settings.fingerprint.PART_SEED_SCHEME.


def keyed_levels(secret: bytes, run_seed: int, image_id: str, levels, sample: int = 0) -> dict[str, list]:
    """The columns of an anonymize-stage row that key its outputs: levels, and per level the output's seed and
    sub-key. Computed on the driver (pipeline.execution.anonymize_pass.work_row); the stage reads nothing else of
    the secret."""
    levels = [float(level) for level in levels]
    return {
        "levels": levels,
        "seeds": output_seeds(secret, run_seed, image_id, levels, sample),
        "subkeys": output_subkeys(secret, run_seed, image_id, levels, sample),
    }


def output_seeds(secret: bytes, run_seed: int, image_id: str, levels, sample: int = 0) -> list[int]:
    """The seed of each of an output's levels (what the row of a whole-image output needs)."""
    return [output_seed(secret, run_seed, image_id, float(level), sample) for level in levels]


def output_subkeys(secret: bytes, run_seed: int, image_id: str, levels, sample: int = 0) -> list[str]:
    """Per level, the hex sub-key of one output: HMAC-SHA256 of the secret over a canonical, length-prefixed
    encoding of the run seed, image id, level (6 decimals, as the seeds) and sample."""
    keys = []
    for level in levels:
        fields = ["boomerang-output-key-v1", str(run_seed), image_id, f"{float(level):.6f}", str(sample)]
        message = b"".join(len(b).to_bytes(8, "big") + b for b in (f.encode("utf-8") for f in fields))
        keys.append(hmac.new(secret, message, hashlib.sha256).hexdigest())
    return keys


def part_seed(subkey: str, index: int) -> int:
    """The 63-bit seed of part `index` (a face, a tile) of the output whose sub-key is `subkey` (hex)."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    digest = hmac.new(bytes.fromhex(subkey), f"boomerang-part-seed-v1\x00{index}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> 1
