"""The output folder of a run: where every file goes, and how private files are written.

See product-spec section 5. Parquet "files" are folders of part files, each written whole by the stage that produced
the rows, so a half-written part never exists under its final name. `--out` is a local folder or an object-store URL
(pipeline.folder.storage). Tables are written through pipeline.tables.write. Locally `private/` is 0700 and every
file in it 0600 from the moment it exists (created with that mode, never chmod-ed later).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.folder import storage
from pipeline.folder.storage import Location


class OutputError(ValueError):
    """The output folder cannot be used."""


def level_dirname(level: float) -> str:
    """`level=0.70`: two decimals, more only where two would merge distinct levels."""
    text = f"{level:.2f}"
    if float(text) != level:
        text = f"{level:.6f}".rstrip("0")
    return f"level={text}"


# What a run writes at the top of its folder; --overwrite removes exactly these.
RUN_ENTRIES = (
    "run.json",
    "images",
    "manifest.parquet",
    "evaluation",
    "report",
    "private",
    "release",
    "train",
    "enhanced",
)


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder."""

    root: Location

    @classmethod
    def at(cls, out: str) -> RunLayout:
        try:
            root = storage.locate(out)
        except storage.StorageError as err:
            raise OutputError(f"--out {err}") from None
        if root.is_file():
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
    # Face embeddings of originals and outputs: biometric data, for the attacker's view
    # (pipeline.outputs.linkage_attack).
    embeddings = property(lambda self: self.root / "private" / "embeddings.parquet")
    # The linkage and re-identification attacks, one row per attacked output: private (pipeline.outputs.linkage_attack).
    attacks = property(lambda self: self.root / "private" / "attacks.parquet")
    failure_file = property(lambda self: self.root / "private" / "failure.txt")
    release = property(lambda self: self.root / "release")
    # `boomerang augment`: the outputs again, laid out for a data loader (class folders, labels.parquet).
    train = property(lambda self: self.root / "train")
    # `boomerang enhance`: the outputs again under their inputs' own names (the user's own data).
    enhanced = property(lambda self: self.root / "enhanced")
    # Its classes' pseudonyms and names (a class is a person, in a face dataset).
    classes = property(lambda self: self.root / "private" / "classes.parquet")

    def check_store(self) -> None:
        """One line (OutputError) when `--out` is a URL whose store cannot be used; nothing for a local folder."""
        try:
            storage.check_reachable(self.root)
        except storage.StorageError as err:
            raise OutputError(f"--out {err}") from None

    @property
    def local(self) -> bool:
        return storage.is_local(self.root)

    def image_path(self, level: float, anon_id: str) -> Location:
        return self.images / level_dirname(level) / f"{anon_id}.png"

    def relative(self, path: Location) -> str:
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
                storage.remove_tree(self.root / child)
        storage.make_dirs(self.root, self.manifest, self.distances)
        storage.make_dirs(self.private, self.outputs, self.embeddings, private=True)


def write_private_bytes(path: Location, data: bytes) -> None:
    """Write a file of private/ whole, 0600 from creation (locally: fsync-ed, file and folder)."""
    storage.write_bytes(path, data, private=True)
