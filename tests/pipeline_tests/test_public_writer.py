"""The public surface declared once (pipeline.tables.schemas) and enforced by the one public writer, at every write.

Each refusal is checked the way an attacker would try to get past it: a private column, a path or an id in a
cell (with spaces, relative, Windows-style, a URI), exception text, a table no one declared, a private table
written with public permissions. Error texts that quote paths with spaces or relative paths leak nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.tables import public_surface, schemas
from pipeline.tables.public_surface import PublicSurfaceError
from pipeline.tables.row_errors import scrub
from pipeline.tables.schemas import MANIFEST_SCHEMA
from pipeline.tables.write import write_private_table, write_public_table

ANON = "0123456789abcdef01234567"
REPO = Path(__file__).resolve().parents[2]


def manifest_row(**changes) -> dict:
    row = {
        "anon_id": ANON,
        "level": 0.5,
        "sample": 0,
        "t_boom": 25,
        "n_steps": 50,
        "status": "ok",
        "error": None,
        "error_kind": None,
        "faces": None,
        "output_path": f"images/level=0.50/{ANON}.png",
        "sha256_output": "ab" * 32,
        "seconds": 1.5,
    }
    return row | changes


def manifest_part(tmp_path: Path) -> Path:
    return tmp_path / "run" / "manifest.parquet" / "part-00000.parquet"


def test_a_declared_table_of_public_values_is_written(tmp_path):
    path = manifest_part(tmp_path)
    rows = [manifest_row(), manifest_row(status="error", error="corrupt: image is truncated or corrupt")]
    write_public_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), path)
    assert pa.parquet.read_table(path).num_rows == 2


@pytest.mark.parametrize("column", ["seed", "error_detail", "source", "image_id", "face_boxes_json"])
def test_the_public_writer_refuses_a_private_or_undeclared_column(tmp_path, column):
    table = pa.Table.from_pylist([manifest_row()], schema=MANIFEST_SCHEMA).append_column(column, pa.array(["x"]))
    path = manifest_part(tmp_path)
    with pytest.raises(PublicSurfaceError, match=repr(column)):
        write_public_table(table, path)
    assert not path.exists()


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("output_path", "/data/theirs/Aaron_Eckhart/Aaron_Eckhart_0001.png"),  # issue 22, finding 2
        ("output_path", "Aaron Eckhart/x.png"),
        ("output_path", f"images/level=0.50/../../{ANON}.png"),
        ("error", "read_failed: OSError: [Errno 2] No such file: '/data/lfw/Aaron Eckhart/x.jpg'"),
        ("error", "read_failed: <path> Eckhart<path>"),  # what the old scrubber made of a path with a space
        ("error", "corrupt: Aaron_Eckhart/Aaron_Eckhart_0001.jpg"),  # a relative path
        ("error", "corrupt: Aaron_Eckhart_0001 is broken"),  # an LFW-style id
        ("error", "corrupt: see C:\\photos\\me.jpg"),
        ("error", "corrupt: ~ sign.jpg"),
        ("error", "Traceback (most recent call last)"),
        ("error", "failed: ValueError: bad input Aaron"),
        ("error", 'failed: the file "Aaron" is broken'),
        ("error", "failed: two\nlines"),
        ("anon_id", "Aaron_Eckhart_0001"),
        ("anon_id", "12345"),  # a raw numeric id in an anon_id column
        ("status", "ok but see /tmp"),
        ("sha256_output", "s3://bucket/Aaron.png"),
    ],
)
def test_the_public_writer_refuses_a_path_id_or_exception_text(tmp_path, column, value):
    table = pa.Table.from_pylist([manifest_row(**{column: value})], schema=MANIFEST_SCHEMA)
    path = manifest_part(tmp_path)
    with pytest.raises(PublicSurfaceError) as refused:
        write_public_table(table, path)
    assert column in str(refused.value) and value not in str(refused.value)  # the refusal never prints the value
    assert not path.exists()


@pytest.mark.parametrize("label", ["/home/me/Aaron Eckhart", "Aaron_Eckhart_0001.jpg", "blur 'Aaron'", "IMG_2041"])
def test_a_free_text_label_may_not_carry_a_path_a_file_name_or_an_id(tmp_path, label):
    from evaluation.tables import SUMMARY_SCHEMA

    row = {f.name: 0 if pa.types.is_integer(f.type) else 0.5 for f in SUMMARY_SCHEMA}
    row |= {"recognizer": "Facenet", "metric": "cosine", "label": "blur-3"}
    ok = pa.Table.from_pylist([row], schema=SUMMARY_SCHEMA)
    write_public_table(ok, tmp_path / "evaluation" / "summary.parquet")
    with pytest.raises(PublicSurfaceError, match="label"):
        write_public_table(
            ok.set_column(ok.schema.get_field_index("label"), "label", pa.array([label])),
            tmp_path / "again" / "evaluation" / "summary.parquet",
        )


def test_the_public_writer_refuses_an_undeclared_table_and_a_private_one(tmp_path):
    table = pa.Table.from_pylist([manifest_row()], schema=MANIFEST_SCHEMA)
    for where in ("evaluation/attacks.parquet", "evaluation/notes.parquet", "manifest.parquet", "report/x.parquet"):
        with pytest.raises(PublicSurfaceError, match="no table is declared"):
            write_public_table(table, tmp_path / where)
    ids = pa.table({"anon_id": [ANON], "image_id": ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg"]})
    with pytest.raises(PublicSurfaceError, match="private"):
        write_public_table(ids, tmp_path / "private" / "identities.parquet")
    assert not any(tmp_path.rglob("*.parquet")) or [p.name for p in tmp_path.rglob("*.parquet")] == []


def test_the_private_writer_writes_only_declared_private_tables(tmp_path):
    ids = pa.table({"anon_id": [ANON], "image_id": ["Aaron Eckhart/x.jpg"], "source": ["/data/Aaron Eckhart/x.jpg"]})
    write_private_table(ids, tmp_path / "private" / "identities.parquet")
    # Not a way around the public writer: a public table, or one outside private/, is refused.
    table = pa.Table.from_pylist([manifest_row(error="corrupt: /data/Aaron Eckhart/x.jpg")], schema=MANIFEST_SCHEMA)
    with pytest.raises(PublicSurfaceError, match="public"):
        write_private_table(table, manifest_part(tmp_path))
    with pytest.raises(PublicSurfaceError, match="no table is declared"):
        write_private_table(ids, tmp_path / "evaluation" / "identities.parquet")
    with pytest.raises(PublicSurfaceError, match="not declared"):
        write_private_table(ids.append_column("notes", pa.array(["x"])), tmp_path / "private" / "identities.parquet")


def test_a_table_staged_to_be_swapped_in_is_its_final_table():
    staged = Path("/o/release.staging-0a1b/manifest.parquet")
    assert schemas.table_at(staged).name == "release_manifest"
    # A run folder that happens to be named like a table's folder is still a run folder.
    assert schemas.table_at(Path("/data/release/manifest.parquet/part-00003.parquet")).name == "manifest"
    assert schemas.table_at(Path("/data/release/evaluation/distances.parquet/part-00003.parquet")).name == "distances"


def test_every_table_declares_each_column_and_every_public_string_its_form():
    names = [t.name for t in schemas.TABLES]
    assert len(names) == len(set(names))
    for table in schemas.TABLES:
        assert table.public_columns | table.private_columns == set(table.schema.names)
        if not table.private:
            assert not table.private_columns
            strings = {f.name for f in table.schema if pa.types.is_string(f.type)}
            assert strings <= set(table.rules), table.name
    # Per-row attack results are private; nothing that says how many photos a person has is public.
    assert schemas.BY_NAME["attacks"].private
    assert not {"rank", "chance_1", "hit_1", "people_single"} & schemas.PUBLIC_COLUMNS - set(
        schemas.BY_NAME["summary"].schema.names
    )


def test_the_schemas_are_declared_once_and_written_only_through_the_table_writers():
    """No module of pipeline/ but tables/schemas.py declares a Parquet schema; none but tables/write.py (and
    folder/storage.py, the bytes) writes a Parquet file."""
    declared, writes = [], []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                where = path.relative_to(REPO / "pipeline").as_posix()
                if name == "schema" and where != "tables/schemas.py":
                    declared.append(path.name)
                if name in ("write_table", "to_parquet", "write_parquet_atomic") and where not in (
                    "tables/write.py",
                    "folder/storage.py",
                ):
                    writes.append(path.name)
    assert declared == [] and writes == []


@pytest.mark.parametrize(
    "text",
    [
        "read_failed: OSError: [Errno 2] No such file or directory: '/data/lfw/Aaron Eckhart/Aaron Eckhart_0001.jpg'",
        "original: ValueError: Face could not be detected in Aaron_Eckhart/Aaron_Eckhart_0001.jpg.",
        "anonymized: ValueError: cannot read Aaron Eckhart/x.jpg",
        "job failed: IsADirectoryError: [Errno 21] Is a directory: 'photos/Aaron Eckhart/Aaron Eckhart_0002.jpg'",
        "corrupt: image of Aaron Eckhart is broken",
        "failed: C:\\Users\\me\\Aaron Eckhart\\x.jpg",
        "Aaron Eckhart",
    ],
)
def test_error_texts_with_spaces_or_relative_paths_leak_nothing(text):
    ids = ("Aaron Eckhart/Aaron Eckhart_0001.jpg", "Aaron_Eckhart/Aaron_Eckhart_0001.jpg")
    public = scrub(text, ids)
    for word in ("Aaron", "Eckhart", "0001", "jpg", "data", "lfw", "photos", "Users", "<path>"):
        assert word not in public, public
    # What is left is a reason code and an exception's type name, a form the public writer accepts.
    code, _, rest = public.partition(": ")
    assert code and rest and public_surface.looks_private(public) is None
    assert rest in ("OSError", "ValueError", "IsADirectoryError", "text withheld")


def test_a_fixed_reason_text_passes_the_scrubber_unchanged():
    for text in (
        "corrupt: image is truncated or corrupt",
        "missing_output: no anonymized image was found for this original",
        "failed: RuntimeError in the worker; retried on rerun",
        "zero embedding: distance undefined",
    ):
        assert scrub(text, ("Jane_Doe/Jane_Doe_0001.jpg",)) == text


def test_every_fixed_error_text_the_product_writes_has_the_public_form():
    from anonymize import ImageError
    from pipeline.execution.anonymize_stage import NO_FACE_TEXT
    from pipeline.execution.evaluate_stage import NO_FACE_ORIGINAL_TEXT
    from pipeline.tables.row_errors import BAD_NAME, DUPLICATE_ID, MISSING_OUTPUT, classify

    errors = [BAD_NAME, DUPLICATE_ID, MISSING_OUTPUT]
    errors += [classify(e) for e in (OSError("x"), MemoryError(), ValueError("x"), RuntimeError("x"))]
    errors += [classify(ImageError("x", reason)) for reason in ImageError.SUMMARIES]
    texts = [e.public for e in errors] + [NO_FACE_TEXT, NO_FACE_ORIGINAL_TEXT]
    rule = schemas.BY_NAME["manifest"].rules["error"]
    assert [t for t in texts if rule.refuses(t)] == []
