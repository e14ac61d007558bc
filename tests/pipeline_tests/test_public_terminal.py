"""The terminal is a public surface too (docs/privacy.md, *Errors*): a job's output is read in CI logs, scheduler
`.out` files and shared screens. What a failed job prints may say what failed (a type, an OS error's fixed
text) but never the exception's own words, which quote the input's paths (for LFW, people's names); those go
to private/failure.txt only.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.execution.job import record_failure
from pipeline.folder.layout import RunLayout

PERSON = "Aaron Eckhart"


def _job(tmp_path: Path) -> SimpleNamespace:
    out = tmp_path / "out"
    (out / "private").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"status": "running"}), encoding="utf-8")
    return SimpleNamespace(layout=RunLayout.at(str(out)))


def _unreadable_source(tmp_path: Path) -> OSError:
    """The error a driver gets reading a source that went away: it quotes the whole path, spaces and all."""
    missing = tmp_path / "lfw" / PERSON / f"{PERSON.replace(' ', '_')}_0001.jpg"
    try:
        missing.open("rb")
    except OSError as err:
        return err
    raise AssertionError("the file should not exist")


def _ray_wrapped(tmp_path: Path) -> RuntimeError:
    """Ray ships a worker's exception as traceback text: the original's words are inside the wrapper's."""
    return RuntimeError(
        "ray::MapBatches(AnonymizeStage)() (pid=4242, ip=10.0.0.1)\n"
        '  File "/work/pipeline/execution/anonymize_stage.py", line 145, in __call__\n'
        f"IsADirectoryError: [Errno 21] Is a directory: 'photos/{PERSON}/{PERSON} 0002.jpg'"
    )


@pytest.mark.parametrize("make", [_unreadable_source, _ray_wrapped], ids=["os-error", "ray-wrapped"])
def test_a_failed_jobs_terminal_line_quotes_no_path(tmp_path, make):
    job, err = _job(tmp_path), make(tmp_path)

    line = record_failure(job, err)

    for word in ("Aaron", "Eckhart", "0001", "0002", "lfw", "photos", ".jpg", str(tmp_path / "lfw")):
        assert word not in line, line
    # It still says what failed, with the OS error's own fixed text, and where the whole error is.
    assert line.startswith("job failed: ") and ("IsADirectoryError" in line or "FileNotFoundError" in line)
    assert "No such file or directory" in line or "Is a directory" in line
    assert "private/failure.txt" in line
    # The whole error, path and all, is kept where paths belong.
    assert PERSON in (job.layout.root / "private" / "failure.txt").read_text()
    assert PERSON not in (job.layout.root / "run.json").read_text()


def test_a_full_disk_still_says_so_on_the_terminal(tmp_path):
    """The OS error's text is libc's, not the exception's: an ENOSPC line keeps 'No space left on device'."""
    err = OSError(28, "No space left on device", str(tmp_path / "out" / "images" / "0123abcd.png"))

    line = record_failure(_job(tmp_path), err)

    assert "No space left on device" in line and "0123abcd" not in line and str(tmp_path) not in line


def test_an_unexpected_error_is_printed_without_its_words(tmp_path):
    """What no command caught (a bug) reaches the terminal as its type only: pyarrow's own error quotes the
    file's path, and with it a person's name."""
    import pyarrow.parquet as pq

    from pipeline.cli import unexpected_line

    table = tmp_path / "lfw" / f"{PERSON}.parquet"
    table.parent.mkdir()
    table.write_bytes(b"not a parquet file")
    try:
        pq.read_table(table)
    except Exception as err:  # noqa: BLE001 - whatever pyarrow raises is the case
        caught = err
    assert PERSON in str(caught)  # the words do quote the name

    line = unexpected_line(caught)

    assert PERSON not in line and "lfw" not in line
    assert type(caught).__name__ in line and "BOOMERANG_TRACEBACK=1" in line
