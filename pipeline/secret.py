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

from anonymize.seeding import MIN_SECRET_BYTES

from .layout import OutputError, RunLayout, write_private_bytes

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
        raise OutputError(
            f"{layout.root} has outputs but its secret private/secret is missing: restore it from a backup "
            "(or pass --secret-file with that run's secret), or pass --overwrite to start afresh"
        )
    value = given if given is not None else secrets.token_bytes(SECRET_BYTES)
    write_private_bytes(path, value.hex().encode("ascii") + b"\n")
    return value


def _read_given(secret_file: str) -> bytes:
    path = Path(secret_file).expanduser()
    if not path.is_file():
        raise OutputError(f"--secret-file {secret_file!r} does not exist (it is a run's private/secret)")
    return parse_secret(path.read_text(encoding="ascii", errors="replace"), f"--secret-file {secret_file!r}")


def output_key(image_id: str, sample: int = 0) -> str:
    """What names one output of an image: the image id for sample 0 (so `--samples 1` names outputs as ever),
    the id and the sample index for the others (`--samples K`). Only ever hashed (`anon_id`), never shown."""
    return image_id if sample == 0 else f"{image_id}\x00sample={sample}"


def anon_id(secret: bytes, image_id: str) -> str:
    """Pseudonymous output name: a keyed hash of the image id (never the file name, which may be a person's)."""
    return hmac.new(secret, image_id.encode("utf-8"), hashlib.sha256).hexdigest()[:24]
