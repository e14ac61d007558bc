"""What an attacker reads: every byte and every Parquet cell outside private/, and the images in a page."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pyarrow.parquet as pq


def public_files(out: Path, own: tuple[str, ...] = ()) -> list[Path]:
    """Every file of a run folder outside private/ (Parquet part files included), and outside the top folders
    `own` names: the user's own data by design (enhance's enhanced/, docs/privacy.md)."""
    return [
        p
        for p in out.rglob("*")
        if p.is_file() and "private" not in p.relative_to(out).parts and p.relative_to(out).parts[0] not in own
    ]


def leaks(out: Path, needles: list[str], own: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(file, needle) for each needle found in a public file's path, its raw bytes or any Parquet cell.

    Parquet pages are compressed, so a byte search alone could miss a string: cells are read too.
    """
    found = []
    for path in public_files(out, own):
        blob = path.read_bytes()
        texts = [path.relative_to(out).as_posix(), blob.decode("utf-8", "replace")]
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            texts += [str(v) for column in table.columns for v in column.to_pylist()]
            texts += [str(table.schema.metadata or "")]
        for needle in needles:
            if any(needle in text for text in texts) or needle.encode() in blob:
                found.append((str(path.relative_to(out)), needle))
    return found


_DATA_URI = re.compile(r"data:image/([a-z+]+);base64,([A-Za-z0-9+/=]+)")


def embedded_images(html: str) -> list[tuple[str, bytes]]:
    """(format, bytes) of every image embedded in an HTML page as a data URI."""
    return [(kind, base64.b64decode(data)) for kind, data in _DATA_URI.findall(html)]


def input_needles(root: Path, ids: list[str]) -> list[str]:
    """What of an input corpus no public byte may hold: its root folder's name and absolute path, every
    component (3+ characters) of every input's relative path, with and without its extension, and every word
    (3+ characters, not all digits) of those, so a partly scrubbed name (`<path> Eckhart`) is caught too."""
    found = {str(root), root.name}
    names = {root.name}
    for rel in ids:
        found.add(rel)
        for part in Path(rel).parts:
            found |= {part, Path(part).stem}
            names.add(Path(part).stem)
    # Words of the names, not of the extensions: "jpg" is no one's.
    found |= {w for name in names for w in re.split(r"[\s_.-]+", name) if not w.isdigit()}
    return sorted(n for n in found if len(n) >= 3)


def original_pieces(root: Path, ids: list[str]) -> list[str]:
    """A run of each input file's own bytes (its tail, not a header many files share) as Python prints bytes
    (`b'...'` escapes): how an original would show in a log that printed a value."""
    pieces = []
    for rel in ids:
        path = root / rel
        if path.is_file() and not path.is_symlink() and path.stat().st_size >= 64:
            pieces.append(repr(path.read_bytes()[-40:-8])[2:-1])
    return pieces


def private_needles(out: Path) -> tuple[list[str], list[bytes]]:
    """(texts, raw byte strings) of what a run folder keeps in private/ and nothing public may hold: the input
    ids and sources, the identity labels, every seed (as text and as the int64 a Parquet column stores), every
    face box (as text in the forms a table, a log or an SVG would print it), and the secret."""
    import pyarrow.parquet as pq

    private = out / "private"
    texts: set[str] = set()
    raw: set[bytes] = set()
    if (private / "secret").is_file():
        secret = (private / "secret").read_text().strip()
        texts.add(secret)
        raw.add(bytes.fromhex(secret))
    if (private / "identities.parquet").is_file():
        ids = pq.read_table(private / "identities.parquet").to_pydict()
        texts |= {str(v) for column in ("image_id", "source", "identity") for v in ids.get(column, []) if v}
    if (private / "outputs.parquet").is_dir():
        outputs = pq.read_table(private / "outputs.parquet").to_pylist()
        seeds = [r["seed"] for r in outputs if r.get("seed") is not None]
        boxes = [b for r in outputs for b in (r.get("face_boxes") or [])]
        seeds += [b["seed"] for b in boxes if b.get("seed") is not None]
        for seed in seeds:
            texts.add(str(seed))
            raw.add(int(seed).to_bytes(8, "little", signed=True))
        for b in boxes:
            for x, y, w, h in ((b["x"], b["y"], b["w"], b["h"]), (b["left"], b["top"], b["side"], b["side"])):
                texts |= {f"{x}, {y}, {w}, {h}", f"{x},{y},{w},{h}", f'x="{x}" y="{y}" width="{w}" height="{h}"'}
    return sorted(texts), sorted(raw)


def terminal_leaks(text: str, needles: list[str]) -> list[str]:
    """The needles a command's terminal output (stdout and stderr together) holds: CI logs, a scheduler's
    `.out` file and a shared screen are read by others, so the terminal is a public surface too."""
    return [needle for needle in needles if needle in text]


def raw_leaks(out: Path, needles: list[bytes], own: tuple[str, ...] = ()) -> list[str]:
    """Public files whose raw bytes hold any of `needles` (a seed as an int64, the secret's bytes)."""
    return [str(p.relative_to(out)) for p in public_files(out, own) if any(n in p.read_bytes() for n in needles)]


def undeclared_columns(out: Path) -> list[tuple[str, str]]:
    """(file, column) of every column of a public Parquet file that pipeline.tables.schemas does not declare public."""
    from pipeline.tables.schemas import PUBLIC_COLUMNS

    found = []
    for path in public_files(out):
        if path.suffix == ".parquet":
            found += [(str(path.relative_to(out)), c) for c in pq.read_schema(path).names if c not in PUBLIC_COLUMNS]
    return found


def ray_log_sizes() -> dict[Path, int]:
    """Every file of this process's Ray session logs (Ray's temp folder, world-readable by default), with its
    size now: what a command writes after is the tail (`ray_logs_since`)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return {p: p.stat().st_size for p in logs.rglob("*") if p.is_file()}


def ray_logs_since(before: dict[Path, int]) -> str:
    """What Ray's session logs gained since `before` (`ray_log_sizes`), as text."""
    text = []
    for path in ray_log_sizes():
        with open(path, "rb") as handle:
            handle.seek(before.get(path, 0))
            text.append(handle.read().decode("utf-8", "replace"))
    return "\n".join(text)
