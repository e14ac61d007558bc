"""Settings from flags and config files, input discovery, and output naming: fast, no Ray."""

from __future__ import annotations

import pytest
from samples import write_faces

from pipeline.cli import make_parser
from pipeline.execution.inputs import InputError, discover
from pipeline.folder.layout import RunLayout, level_dirname
from pipeline.folder.secret import anon_id, load_secret
from pipeline.settings.config import SettingsError, settings_from_flags


def settings(*argv):
    return settings_from_flags(vars(make_parser().parse_args(["run", "in", "--out", "out", *argv])))


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_config_file_values_are_used_and_flags_override_them(tmp_path, suffix):
    config = tmp_path / f"job{suffix}"
    if suffix == ".toml":
        config.write_text(
            'levels = [0.3, 0.5]\nseed = 7\n[sampler]\nsteps = 20\nprompt = "a face"\n'
            '[evaluation]\nrecognizers = ["Facenet"]\nthresholds = {Facenet = 0.5}\n'
        )
    else:
        config.write_text(
            "levels: [0.3, 0.5]\nseed: 7\nsampler:\n  steps: 20\n  prompt: a face\n"
            "evaluation:\n  recognizers: [Facenet]\n  thresholds: {Facenet: 0.5}\n"
        )

    s = settings("--config", str(config), "--seed", "9")

    assert s.levels == (0.3, 0.5) and s.seed == 9
    assert s.sampler.steps == 20 and s.sampler.prompt == "a face"
    assert s.evaluation.recognizers == ("Facenet",) and s.evaluation.threshold_for("Facenet") == 0.5
    assert s.sampler.model_batch == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--levels", "0.5,abc"], "--levels must be numbers"),
        (["--levels", "0.5,0.5"], "--levels has duplicates"),
        (["--levels", "nan"], "--levels: level must be in (0, 1]"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["--scheduler", "euler"], "--scheduler must be one of"),
        (["--guidance-scale", "-1"], "--guidance-scale must be"),
        (["--thresholds", "VGG-Face"], "--thresholds must look like"),
        (["--gate", "--ladder", "0.9,0.5"], "--ladder must increase"),
    ],
)
def test_bad_settings_name_the_flag_and_value(argv, message):
    with pytest.raises(SettingsError) as err:
        settings(*argv)
    assert message in str(err.value)


def test_an_unknown_config_key_is_named(tmp_path):
    config = tmp_path / "job.toml"
    config.write_text("levle = 0.5\n")
    with pytest.raises(SettingsError, match="unknown setting 'levle'"):
        settings("--config", str(config))


def test_folder_discovery_is_recursive_sorted_and_skips_non_images(tmp_path):
    ids = write_faces(tmp_path, 3, size=(32, 32))
    (tmp_path / "README.txt").write_text("not an input")
    (tmp_path / "Jane_Doe" / "loop").symlink_to(tmp_path, target_is_directory=True)  # a symlink loop

    found = discover(str(tmp_path))

    assert found.kind == "folder"
    assert [item.image_id for item in found.items] == sorted(ids)
    assert all(item.source.endswith(item.image_id) for item in found.items)


def test_missing_or_empty_inputs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        discover(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="no images found"):
        discover(str(tmp_path))


def test_output_names_are_keyed_and_levels_are_stable_folder_names(tmp_path):
    layout = RunLayout.at(str(tmp_path))
    layout.prepare(overwrite=False)
    secret = load_secret(layout)
    assert load_secret(layout) == secret and len(secret) == 32
    name = anon_id(secret, "Jane_Doe/Jane_Doe_0001.jpg")
    assert name != anon_id(b"another secret of 32 bytes......", "Jane_Doe/Jane_Doe_0001.jpg") and "Jane" not in name
    assert level_dirname(0.7) == "level=0.70" and level_dirname(0.725) == "level=0.725"


def test_a_bad_command_line_is_one_line_and_exit_status_2(capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "in", "--out", "o", "--no-such-flag"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--no-such-flag" in err and "--help" in err
