"""Ray's own logs are a public surface (docs/privacy.md, attacker 4): they are written under Ray's temp folder
(/tmp/ray/session_*/logs, world-readable by default) on every node, and a cluster's dashboard serves them.

Ray Data converts each batch a stage returns to Arrow; a column it cannot convert (an object column holding
NaN for a failed row and bytes or text for the others) is pickled instead, and the first such failure in a
process is logged at DEBUG with the column's values: the original image's bytes, whole, or a failed row's
error text with its path. The stages hand Ray only columns it converts natively, so nothing is logged.
"""

from __future__ import annotations

import pytest
from samples import write_faces
from scans import input_needles, original_pieces, ray_log_sizes, ray_logs_since

pytestmark = pytest.mark.slow

PEOPLE = ("Hermione_Quillfeather", "Bartholomew_Zeng")


def test_ray_logs_hold_no_original_image_and_no_name(cli, tmp_path):
    data = tmp_path / "Quillfeather Album"
    ids = write_faces(data, 3, size=(64, 64), people=PEOPLE)
    bad = f"{PEOPLE[0]}/{PEOPLE[0]}_0009.jpg"
    (data / bad).write_bytes(b"\xff\xd8\xff\xe0 truncated")  # an error row in the same batch as ok rows
    before = ray_log_sizes()

    status, _, err = cli(
        "anonymize", str(data), "--out", str(tmp_path / "out"), "--levels", "0.5", "--steps", "4",
        "--batch-size", "8",
    )  # fmt: skip

    assert status == 0, err
    written = ray_logs_since(before)
    assert [p for p in original_pieces(data, ids) if p in written] == []
    assert [n for n in input_needles(data, [*ids, bad]) if n in written] == []
