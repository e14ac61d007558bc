"""`enhanced/` names (pipeline.outputs.enhanced_folder): the input's relative path, levels and samples apart,
two inputs never one name, and an id that is not a plain relative path never a path outside the folder."""

from __future__ import annotations

import pandas as pd

from pipeline.outputs.enhanced_folder import enhanced_names


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["anon_id", "level", "sample", "image_id"])


def test_one_level_one_sample_keeps_the_inputs_relative_path_as_png():
    names = enhanced_names(frame([("k1", 0.2, 0, "trips/2019/beach.jpg"), ("k2", 0.2, 0, "cat.png")]))
    assert names == {("k1", 0.2): "trips/2019/beach.png", ("k2", 0.2): "cat.png"}


def test_levels_and_samples_are_kept_apart_and_a_shared_name_keeps_its_extension():
    rows = [(f"{i}{s}{lv}", lv, s, i) for i in ("a.jpg", "a.png") for s in (0, 1) for lv in (0.1, 0.2)]
    names = enhanced_names(frame(rows))
    assert len(set(names.values())) == len(rows) == 8
    assert names[("a.jpg00.1", 0.1)] == "level=0.10/a.sample0.png"
    assert names[("a.png10.2", 0.2)] == "level=0.20/a.png.sample1.png"


def test_an_id_that_is_not_a_plain_relative_path_gets_the_keyed_name():
    rows = [
        ("k1", 0.2, 0, "../../etc/x"),
        ("k2", 0.2, 0, "/abs/y.jpg"),
        ("k3", 0.2, 0, "a\\b.jpg"),
        ("k4", 0.2, 0, "42"),
    ]
    names = enhanced_names(frame(rows))
    assert names == {("k1", 0.2): "k1.png", ("k2", 0.2): "k2.png", ("k3", 0.2): "k3.png", ("k4", 0.2): "42.png"}
