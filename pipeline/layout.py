"""The output folder of a run: where every file goes, and the run's secret salt.

See product-spec section 5. Parquet "files" are folders of part files, each written atomically by the
stage that produced the rows, so a half-written part never exists under its final name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path


class OutputError(ValueError):
    """The output folder cannot be used."""


def level_dirname(level: float) -> str:
    """`level=0.70`: two decimals, more only where two would merge distinct levels."""
    text = f"{level:.2f}"
    if float(text) != level:
        text = f"{level:.6f}".rstrip("0")
    return f"level={text}"


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder."""

    root: Path

    @classmethod
    def at(cls, out: str) -> RunLayout:
        if "://" in out and not out.startswith("file://"):
            raise OutputError(
                f"--out {out!r}: write to a local or mounted shared folder (NFS, FUSE-mounted bucket); "
                "object-store URIs are read-only inputs for now"
            )
        return cls(Path(out.removeprefix("file://")).expanduser().resolve())

    run_json = property(lambda self: self.root / "run.json")
    images = property(lambda self: self.root / "images")
    manifest = property(lambda self: self.root / "manifest.parquet")
    evaluation = property(lambda self: self.root / "evaluation")
    distances = property(lambda self: self.root / "evaluation" / "distances.parquet")
    summary = property(lambda self: self.root / "evaluation" / "summary.parquet")
    report = property(lambda self: self.root / "report")
    private = property(lambda self: self.root / "private")
    identities = property(lambda self: self.root / "private" / "identities.parquet")
    salt_file = property(lambda self: self.root / "private" / "salt")
    release = property(lambda self: self.root / "release")

    def image_path(self, level: float, anon_id: str) -> Path:
        return self.images / level_dirname(level) / f"{anon_id}.png"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def prepare(self, overwrite: bool) -> None:
        """Create the folder; with overwrite, remove what an earlier run wrote there first."""
        if overwrite and self.root.exists():
            for child in (
                "run.json",
                "images",
                "manifest.parquet",
                "evaluation",
                "report",
                "private",
                "release",
            ):
                target = self.root / child
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        for folder in (self.root, self.manifest, self.distances, self.identities, self.private):
            folder.mkdir(parents=True, exist_ok=True)

    def salt(self) -> bytes:
        """The run's secret salt: made once, kept in private/, reused on resume."""
        if self.salt_file.exists():
            return bytes.fromhex(self.salt_file.read_text().strip())
        value = secrets.token_bytes(32)
        tmp = self.salt_file.with_suffix(".tmp")
        tmp.write_text(value.hex())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.salt_file)
        return value


def anon_id(salt: bytes, image_id: str) -> str:
    """Pseudonymous output name: a keyed hash of the image id (never the file name, which may be a person's)."""
    return hmac.new(salt, image_id.encode("utf-8"), hashlib.sha256).hexdigest()[:24]
