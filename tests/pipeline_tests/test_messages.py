"""Messages that are true (issue 24, item 5): counts say what they count, exclusions are stated, an interruption
says how much was kept, a Parquet image column of the wrong type is refused before Ray starts, a refused run
creates nothing, and a finished run leaves no lock file."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.execution.messages import interrupt_line, interrupted_text, kept_outputs
from pipeline.folder.lock import RunLock, _same_file
from pipeline.folder.lock_common import FolderLocked
from pipeline.outputs.finalize import _cleared


def summary_row(**values):
    row = {"recognizer": "Facenet", "n_evaluated": 6, "n_missing_output": 0, "n_cleared": 6, "fraction_cleared": 1.0}
    row |= {"n_faces": pd.NA, "n_no_face_original": 0, "n_errors": 0}
    return next(pd.DataFrame([row | values]).itertuples())


def test_counts_say_images_or_faces_and_what_they_leave_out():
    assert _cleared(summary_row()) == "Facenet 100% (6/6 images)"
    # 8 images, 2 of them with no face in the original: said, not dropped silently.
    assert _cleared(summary_row(n_no_face_original=2)) == (
        "Facenet 100% (6/6 images; not counted: 2 with no face in the original)"
    )
    # Face-region mode: the rows are faces.
    assert _cleared(summary_row(n_faces=2, n_evaluated=2, n_cleared=2, n_errors=1)) == (
        "Facenet 100% (2/2 faces; not counted: 1 failed)"
    )


def test_an_interruption_says_how_much_was_kept():
    assert interrupt_line("interrupted", 0) == (
        "boomerang: interrupted; no output had finished in this run, so nothing new was kept: "
        "run the same command again to resume"
    )
    assert interrupt_line("terminated", 5).startswith("boomerang: terminated; 5 outputs finished in this run are kept")
    assert "nothing was written" in interrupt_line("interrupted", None)
    assert "KeyboardInterrupt" not in interrupted_text(0)
    # Finished passes and the running pass's counted outputs.
    assert kept_outputs(SimpleNamespace(pairs_done_now=3, progress=SimpleNamespace(done=2))) == 5
    assert kept_outputs(SimpleNamespace(pairs_done_now=3, progress=None)) == 3


@pytest.mark.slow
def test_a_parquet_image_column_of_strings_is_refused_up_front_and_creates_nothing(tmp_path):
    data = tmp_path / "faces.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "image": ["a.png", "b.png"]}), data)
    for out in (tmp_path / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        # Its own process: the refusal comes from the input check, before any cluster or model is touched.
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", str(data), "--out", str(out), "--levels", "0.5"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "RAY_ADDRESS": ""},
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert "column 'image' holds string, not encoded image bytes" in line and "--image-column" in line
        # Nothing created: no folder where there was none, and no lock file left in an existing one.
        assert not out.exists() if out.name == "new" else list(out.iterdir()) == []


def test_a_released_lock_leaves_no_file_and_a_stale_inode_locks_nothing(tmp_path):
    path = tmp_path / ".boomerang.lock"
    first = RunLock(path).acquire()
    with pytest.raises(FolderLocked):
        RunLock(path).acquire()
    stale = os.open(path, os.O_RDWR)  # a second driver that opened the file just before the first let go
    first.close()
    assert not path.exists()  # a finished run leaves no lock file
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it wins the old file's flock ...
    assert not _same_file(stale, path)  # ... which RunLock.acquire sees is not the file at the path, and retries
    try:
        second = RunLock(path).acquire()  # ... which is no lock: the file at the path is a new one
        assert second.held and path.exists()
        with pytest.raises(FolderLocked):
            RunLock(path).acquire()
        second.close()
    finally:
        os.close(stale)
