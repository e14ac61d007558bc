"""The output folder of a run: where every file goes, and how private files are written.

See product-spec section 5. Parquet "files" are folders of part files, each written atomically by the
stage that produced the rows, so a half-written part never exists under its final name. `private/` is
0700 and every file in it 0600 from the moment it exists (created with that mode, never chmod-ed later).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from evaluation.tables import fsync_folder


class OutputError(ValueError):
    """The output folder cannot be used."""


def level_dirname(level: float) -> str:
    """`level=0.70`: two decimals, more only where two would merge distinct levels."""
    text = f"{level:.2f}"
    if float(text) != level:
        text = f"{level:.6f}".rstrip("0")
    return f"level={text}"


# What a run writes at the top of its folder; --overwrite removes exactly these.
RUN_ENTRIES = ("run.json", "images", "manifest.parquet", "evaluation", "report", "private", "release", "train")


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
        root = Path(out.removeprefix("file://")).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise OutputError(f"--out {out!r} is a file; give a folder (new, or one that holds a boomerang run)")
        return cls(root)

    run_json = property(lambda self: self.root / "run.json")
    lock_file = property(lambda self: self.root / ".boomerang.lock")
    images = property(lambda self: self.root / "images")
    manifest = property(lambda self: self.root / "manifest.parquet")
    evaluation = property(lambda self: self.root / "evaluation")
    distances = property(lambda self: self.root / "evaluation" / "distances.parquet")
    summary = property(lambda self: self.root / "evaluation" / "summary.parquet")
    report = property(lambda self: self.root / "report")
    private = property(lambda self: self.root / "private")
    secret_file = property(lambda self: self.root / "private" / "secret")
    identities = property(lambda self: self.root / "private" / "identities.parquet")
    outputs = property(lambda self: self.root / "private" / "outputs.parquet")
    # Face embeddings of originals and outputs: biometric data, for the attacker's view (pipeline.attacks).
    embeddings = property(lambda self: self.root / "private" / "embeddings.parquet")
    failure_file = property(lambda self: self.root / "private" / "failure.txt")
    release = property(lambda self: self.root / "release")
    # `boomerang augment`: the outputs again, laid out for a data loader (class folders, labels.parquet).
    train = property(lambda self: self.root / "train")

    def image_path(self, level: float, anon_id: str) -> Path:
        return self.images / level_dirname(level) / f"{anon_id}.png"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def holds_run(self) -> bool:
        return self.run_json.is_file()

    def has_outputs(self) -> bool:
        """True once any (image, level) row or image exists: from then on the secret must not change."""
        return any(self.manifest.glob("part-*.parquet")) or any(self.images.rglob("*.png"))

    def prepare(self, overwrite: bool) -> None:
        """Create the folder; with overwrite, remove what an earlier run wrote there first.

        --overwrite only ever deletes a boomerang run's own entries, and only in a folder that holds a
        run (run.json): a mistyped --out must not cost anyone their files.
        """
        if overwrite and self.root.exists():
            if not self.holds_run() and any(p.name != self.lock_file.name for p in self.root.iterdir()):
                raise OutputError(
                    f"--overwrite refused: {self.root} is not empty and holds no boomerang run (no run.json)"
                )
            for child in RUN_ENTRIES:
                target = self.root / child
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        for folder in (self.root, self.manifest, self.distances):
            folder.mkdir(parents=True, exist_ok=True)
        make_private_dir(self.private)
        make_private_dir(self.outputs)
        make_private_dir(self.embeddings)


def make_private_dir(folder: Path) -> None:
    """Create `folder` 0700 (no window in which it is readable by others)."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)  # an existing folder from an older run, or one made under a loose umask


def write_private_bytes(path: Path, data: bytes) -> None:
    """Write a file of private/ atomically, 0600 from creation, fsync-ed (file and folder)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)


def write_private_table(table: pa.Table, path: Path) -> None:
    """A Parquet file of private/, written like `write_private_bytes`."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_private_bytes(path, sink.getvalue().to_pybytes())
