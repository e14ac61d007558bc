"""Ray's own logs are a public surface (docs/privacy.md, attacker 4): they are written under Ray's temp folder
(/tmp/ray/session_*/logs, world-readable by default) on every node, and a cluster's dashboard serves them.

Ray Data converts each batch a stage returns to Arrow; a column it cannot convert (an object column holding
NaN for a failed row and bytes or text for the others) is pickled instead, and the first such failure in a
process is logged at DEBUG with the column's values: the original image's bytes, whole, or a failed row's
error text with its path. The stages hand Ray only columns it converts natively, so nothing is logged.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from samples import write_faces
from scans import input_needles

pytestmark = pytest.mark.slow

PEOPLE = ("Hermione_Quillfeather", "Bartholomew_Zeng")


def _log_files() -> dict[Path, int]:
    """Every file under the session's Ray logs, with its size now (what a job writes after is the tail)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return {p: p.stat().st_size for p in logs.rglob("*") if p.is_file()}


def _written_since(before: dict[Path, int]) -> str:
    text = []
    for path in _log_files():
        with open(path, "rb") as handle:
            handle.seek(before.get(path, 0))
            text.append(handle.read().decode("utf-8", "replace"))
    return "\n".join(text)


def test_ray_logs_hold_no_original_image_and_no_name(cli, tmp_path):
    data = tmp_path / "Quillfeather Album"
    ids = write_faces(data, 3, size=(64, 64), people=PEOPLE)
    bad = f"{PEOPLE[0]}/{PEOPLE[0]}_0009.jpg"
    (data / bad).write_bytes(b"\xff\xd8\xff\xe0 truncated")  # an error row in the same batch as ok rows
    before = _log_files()

    status, _, err = cli(
        "anonymize", str(data), "--out", str(tmp_path / "out"), "--levels", "0.5", "--steps", "4",
        "--batch-size", "8",
    )  # fmt: skip

    assert status == 0, err
    written = _written_since(before)
    # A run of each original's own bytes (its last entropy-coded data, not the header JPEGs share), as Python
    # prints bytes (b'...' escapes).
    pieces = [repr((data / rel).read_bytes()[-40:-8])[2:-1] for rel in ids]
    assert [p for p in pieces if p in written] == []
    assert [n for n in input_needles(data, [*ids, bad]) if n in written] == []
