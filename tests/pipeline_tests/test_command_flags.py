"""Each command offers exactly the flags whose settings it uses (issue 24, item 6), and its --config file is
held to the same rule. The parsers are walked as `boomerang` builds them; what each flag needs is written here
from what the commands do (docs/*.md), not read from pipeline.commands.flags, and the library sections' keys
are cross-checked with the stages the fingerprint gives them."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest
from samples import write_faces

from anonymize import SamplerSettings
from evaluation import EvaluationSettings
from pipeline.cli import main, make_parser
from pipeline.settings.fingerprint import ANONYMIZE, EVALUATE, stage_of

# What each job command runs.
RUNS = {
    "run": {"anonymize", "evaluate", "regions", "gate"},
    "anonymize": {"anonymize", "regions"},
    "augment": {"anonymize", "evaluate", "regions"},  # evaluation with --evaluate; never a release
    "enhance": {"anonymize"},  # whole images in tiles: refuses --region faces; no evaluation
    "evaluate": {"evaluate", "regions"},  # another tool's outputs: no sampler, levels from their folder
}
ANY = frozenset()  # every job
# What each flag's setting needs the command to run (any one of the set).
NEEDS: dict[str, frozenset[str]] = {
    **dict.fromkeys(
        ["out", "config", "overwrite", "address", "shard_size", "max_pixels", "id_column", "image_column"],
        ANY,
    ),
    **dict.fromkeys(["weights_from", "secret_file", "retry_errors", "strict", "shared_filesystem_lock"], ANY),
    **dict.fromkeys([f.name for f in fields(SamplerSettings)], frozenset({"anonymize"})),
    **dict.fromkeys(
        ["levels", "seed", "samples", "batch_size", "workers", "gpus_per_worker"], frozenset({"anonymize"})
    ),
    **dict.fromkeys([f.name for f in fields(EvaluationSettings)], frozenset({"evaluate"})),
    **dict.fromkeys(["eval_workers", "eval_gpus_per_worker", "eval_batch_size"], frozenset({"evaluate"})),
    "report_originals": frozenset({"evaluate"}),  # the report with pictures is an evaluated run's
    # Labels for the re-identification attack, which runs on the evaluation's embeddings.
    **dict.fromkeys(["identity_from", "identity_column"], frozenset({"evaluate"})),
    "deepface_home": frozenset({"evaluate", "regions"}),  # the recognizers, or the face detector
    **dict.fromkeys(["region", "region_detector", "region_margin"], frozenset({"regions"})),
    # How a face's new pixels go back into the photo, and what a faceless photo gets: anonymization in region mode.
    **dict.fromkeys(["region_feather", "no_face"], frozenset({"regions"})),
    **dict.fromkeys(
        ["gate", "ladder", "gate_thresholds", "gate_override", "gate_max_linkage", "accept_scene_linkage"],
        frozenset({"gate"}),
    ),
    "report_withheld": frozenset({"gate"}),  # released vs withheld pictures: a gate run's report
}
ALSO_ANONYMIZE = {"region_feather", "no_face"}  # need regions and the sampler both
OWN = {  # a command's own flags
    "augment": {"evaluate", "label_column"},
    "enhance": {"scale", "filter", "tile_overlap", "benchmark"},
    "evaluate": {"originals", "anonymized", "label"},
}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = make_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def offered(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest != "help"}


def uses(command: str, dest: str) -> bool:
    needs = NEEDS[dest]
    runs = RUNS[command]
    return (not needs or bool(needs & runs)) and (dest not in ALSO_ANONYMIZE or "anonymize" in runs)


def test_the_library_settings_belong_to_the_stage_the_fingerprint_gives_them():
    for f in fields(SamplerSettings):
        assert stage_of(f"sampler.{f.name}") == (ANONYMIZE,) and NEEDS[f.name] == {"anonymize"}
    for f in fields(EvaluationSettings):
        assert stage_of(f"evaluation.{f.name}") == (EVALUATE,) and NEEDS[f.name] == {"evaluate"}
    assert stage_of("seed") == (ANONYMIZE,)


@pytest.mark.parametrize("command", list(RUNS))
def test_each_job_command_offers_exactly_the_flags_it_uses(command):
    parser = subparsers()[command]
    flags = offered(parser) - OWN.get(command, set()) - {"input"}

    unclassified = flags - set(NEEDS)
    assert unclassified == set(), f"classify these flags in NEEDS: {unclassified}"
    assert sorted(d for d in flags if not uses(command, d)) == []  # nothing offered that it does not use
    # ... and nothing it uses left out (the config-only sampler/evaluation fields have no flag anywhere).
    config_only = {"metric", "align"}
    missing = {d for d in NEEDS if uses(command, d)} - flags - config_only
    assert missing == set()


def test_augment_offers_no_gate_and_enhance_no_identity_evaluation_or_face_flag():
    """The help a user reads: the issue's two examples and their kin."""
    parsers = subparsers()
    augment, enhance, evaluate = (parsers[c].format_help() for c in ("augment", "enhance", "evaluate"))
    assert "--steps" in augment and "--recognizers" in augment
    for flag in ("--gate", "--ladder", "--gate-thresholds", "--report-withheld", "--accept-scene-linkage"):
        assert flag not in augment
    assert "--scale" in enhance and "--steps" in enhance
    for flag in ("--identity-from", "--recognizers", "--region", "--no-face", "--deepface-home", "--gate"):
        assert flag not in enhance
    for flag in ("--levels", "--seed", "--steps", "--samples", "--gate", "--region-feather"):
        assert flag not in evaluate


@pytest.mark.parametrize(
    "argv",
    [
        ["augment", "in", "--out", "o", "--gate"],
        ["enhance", "in", "--out", "o", "--identity-from", "folder"],
        ["enhance", "in", "--out", "o", "--deepface-home", "d"],
        ["anonymize", "in", "--out", "o", "--recognizers", "Facenet"],
        ["evaluate", "--originals", "in", "--anonymized", "a", "--out", "o", "--levels", "0.5"],
    ],
)
def test_a_flag_the_command_does_not_offer_is_refused_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "unrecognized arguments" in err and argv[-2] in err


def test_a_config_key_the_command_does_not_use_is_refused_in_one_line_before_anything_is_made(tmp_path, capsys):
    data = tmp_path / "in"
    write_faces(data, 1)
    config = tmp_path / "job.toml"
    config.write_text('steps = 4\ngate = true\nladder = [0.5, 0.9]\n[evaluation]\nrecognizers = ["Facenet"]\n')
    out = tmp_path / "out"

    status = main(["augment", str(data), "--out", str(out), "--config", str(config)])

    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "boomerang augment does not use gate, ladder (settings of run)" in err
    assert not out.exists()
    # evaluate uses the evaluation settings but no sampler's
    status = main(
        ["evaluate", "--originals", str(data), "--anonymized", str(data), "--out", str(out), "--config", str(config)]
    )
    err = capsys.readouterr().err
    assert status == 2 and "boomerang evaluate does not use gate, ladder, steps (settings of run" in err
    assert not out.exists()


def test_config_keys_the_command_uses_pass_and_a_typo_is_still_named(tmp_path, capsys):
    from pipeline.commands.flags import check_config

    config = tmp_path / "eval.yaml"
    config.write_text("recognizers: [Facenet]\nmetric: cosine\nalign: true\nidentity_from: folder\nregion: faces\n")
    parser = make_parser()
    check_config(
        parser,
        parser.parse_args(["evaluate", "--originals", "a", "--anonymized", "b", "--out", "o", "--config", str(config)]),
    )
    config.write_text("levle: 0.5\n")
    assert main(["run", "in", "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "unknown setting 'levle'" in capsys.readouterr().err


def test_augment_refuses_measuring_flags_without_evaluate(tmp_path, capsys):
    data = tmp_path / "in"
    write_faces(data, 1)

    status = main(
        ["augment", str(data), "--out", str(tmp_path / "o"), "--recognizers", "Facenet", "--identity-from", "folder"]
    )

    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "--identity-from, --recognizers: augment measures its samples only with --evaluate" in err
