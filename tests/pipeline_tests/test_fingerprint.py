"""What determines a run's outputs is derived from the settings objects (pipeline.settings.fingerprint): a new knob is
covered without another edit, region mode and the device are in it, and a rerun that changes any of it is
refused in one line naming the flag."""

from __future__ import annotations

import json
from dataclasses import field, fields, is_dataclass, make_dataclass, replace

import pytest
from samples import write_faces

from anonymize import EnhanceSettings, SamplerSettings
from pipeline.folder.provenance import RefusedRerun, check_rerun, record_fingerprint
from pipeline.settings import fingerprint as fp
from pipeline.settings.config import JobSettings, build_settings

MODEL = {"model": "some/model", "commit": "c0ffee", "weights_sha256": None}
RECOGNIZERS = {"Facenet": {"weights_sha256": "f" * 64, "random_weights": True}}


def settings(**values) -> JobSettings:
    return build_settings({"out": "/tmp/fingerprint-test", "recognizers": "Facenet", **values})


def recorded(determining: dict) -> dict:
    """A run.json record holding `determining`, as pipeline.execution.job writes it."""
    record: dict = {}
    record_fingerprint(record, determining)
    return json.loads(json.dumps(record))  # as read back from disk


def field_paths(obj, prefix: str = "") -> list[str]:
    """Every leaf field of a settings dataclass and of the dataclasses in it, dotted; walked here on its own."""
    paths = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        paths += field_paths(value, prefix + f.name + ".") if is_dataclass(value) else [prefix + f.name]
    return paths


def test_every_settings_field_is_in_the_fingerprint_or_named_as_not_changing_outputs():
    job = replace(settings(region="faces"), enhance=EnhanceSettings())
    found = fp.fingerprint(job, "run", MODEL, RECOGNIZERS, "cpu")
    paths = field_paths(job)
    for path in paths:
        assert path in found or path in fp.NOT_OUTPUT, f"{path} is neither in the fingerprint nor allowlisted"
        assert not (path in found and path in fp.NOT_OUTPUT), path
    assert set(fp.NOT_OUTPUT) <= set(paths), "an allowlist entry names no field"
    assert all(reason.strip() for reason in fp.NOT_OUTPUT.values())
    # What pins the bytes stands for names and local paths: the hub commit, the device and dtype actually used.
    assert found["sampler.model"] == "c0ffee"
    assert (found["sampler.device"], found["sampler.dtype"]) == ("cpu", "float32")
    assert found["recognizer_weights"] == {"Facenet": "f" * 64}
    assert not any(str(value).startswith("/") for value in found.values()), "a local path in the fingerprint"
    # Each stage has only its own keys: an evaluate-only job no sampler keys, an anonymize-only job no
    # evaluation keys; the face-region keys are in both.
    evaluate_only = fp.fingerprint(job, "evaluate", None, RECOGNIZERS)
    anonymize_only = fp.fingerprint(job, "anonymize", MODEL, None, "cpu")
    assert not any(k.startswith(("sampler.", "enhance", "seed")) for k in evaluate_only)
    assert not any(k.startswith("evaluation.") or k == "recognizer_weights" for k in anonymize_only)
    assert evaluate_only["region.mode"] == anonymize_only["region.mode"] == "faces"


def test_a_new_output_field_is_refused_on_rerun_without_any_other_module_knowing_it():
    # A knob that exists nowhere else: no flag, no config key, no provenance entry.
    sampler_type = make_dataclass(
        "SamplerWithEta", [("eta", float, field(default=0.0))], bases=(SamplerSettings,), frozen=True
    )
    base = settings()
    before = replace(base, sampler=sampler_type(eta=0.0, model_batch=4))
    after = replace(base, sampler=sampler_type(eta=0.3, model_batch=4))
    old = fp.fingerprint(before, "run", MODEL, RECOGNIZERS, "cpu")
    new = fp.fingerprint(after, "run", MODEL, RECOGNIZERS, "cpu")
    assert old["sampler.eta"] == 0.0 and new["sampler.eta"] == 0.3 and fp.digest(old) != fp.digest(new)
    check_rerun(recorded(old), old, has_outputs=True)  # the same settings resume
    with pytest.raises(RefusedRerun, match=r"--eta differs .*recorded 0\.0, now 0\.3"):
        check_rerun(recorded(old), new, has_outputs=True)
    # A folder made before the field existed ran as its default does: it resumes at the default, and any
    # other value is a change, not a key to skip.
    older = recorded(fp.fingerprint(base, "run", MODEL, RECOGNIZERS, "cpu"))
    assert "sampler.eta" not in older["determines_outputs"]
    check_rerun(older, old, has_outputs=True, defaults=fp.defaults(before))
    with pytest.raises(RefusedRerun, match=r"--eta differs .*recorded 0\.0, now 0\.3"):
        check_rerun(older, new, has_outputs=True, defaults=fp.defaults(after))
    # A key recorded and absent now is a change as well.
    with pytest.raises(RefusedRerun, match=r"--eta differs .*recorded 0\.3, now not set"):
        check_rerun(recorded(new), fp.fingerprint(base, "run", MODEL, RECOGNIZERS, "cpu"), has_outputs=True)
    check_rerun(recorded(old), new, has_outputs=False)  # nothing made yet: nothing to protect


@pytest.mark.parametrize(("first", "then"), [("faces", "image"), ("image", "faces")])
def test_region_and_whole_image_runs_never_share_a_folder(first, then):
    made = fp.fingerprint(settings(region=first), "run", MODEL, RECOGNIZERS, "cpu")
    rerun = fp.fingerprint(settings(region=then), "run", MODEL, RECOGNIZERS, "cpu")
    with pytest.raises(RefusedRerun, match=f"^--region differs .*recorded '{first}', now '{then}'"):
        check_rerun(recorded(made), rerun, has_outputs=True)
    # ... in either stage alone, too.
    for mode, model, recognizers in (("anonymize", MODEL, None), ("evaluate", None, RECOGNIZERS)):
        made = fp.fingerprint(settings(region=first), mode, model, recognizers, "cpu")
        rerun = fp.fingerprint(settings(region=then), mode, model, recognizers, "cpu")
        with pytest.raises(RefusedRerun, match="--region differs"):
            check_rerun(recorded(made), rerun, has_outputs=True)


def test_the_device_and_dtype_are_compared_once_known_and_a_stage_added_later_is_not_a_change():
    job = settings()
    on_cpu = fp.fingerprint(job, "run", MODEL, RECOGNIZERS, "cpu")
    on_gpu = fp.fingerprint(job, "run", MODEL, RECOGNIZERS, "cuda")
    assert (on_gpu["sampler.device"], on_gpu["sampler.dtype"]) == ("cuda", "float16")
    with pytest.raises(RefusedRerun, match=r"^--device .*recorded 'cpu', now 'cuda'"):
        check_rerun(recorded(on_cpu), on_gpu, has_outputs=True)
    half = fp.fingerprint(settings(dtype="float16"), "run", MODEL, RECOGNIZERS, "cpu")
    with pytest.raises(RefusedRerun, match="^--dtype differs"):
        check_rerun(recorded(on_cpu), half, has_outputs=True)
    # Before the driver knows its cluster the device is not known: the check waits for it (pipeline.execution.job).
    check_rerun(recorded(on_cpu), fp.fingerprint(job, "run", MODEL, RECOGNIZERS), has_outputs=True)
    # An anonymize-only folder later evaluated: the evaluation keys are new, nothing recorded changes.
    anonymized = fp.fingerprint(job, "anonymize", MODEL, None, "cpu")
    check_rerun(recorded(anonymized), on_cpu, has_outputs=True)
    record = recorded(anonymized)
    record_fingerprint(record, fp.fingerprint(job, "evaluate", None, RECOGNIZERS))
    assert "sampler.steps" in record["determines_outputs"] and "evaluation.detector" in record["determines_outputs"]
    assert record["determines_outputs_digest"] == fp.digest(record["determines_outputs"])
    # Adding a recognizer is allowed (its rows are new); a changed weight file is not.
    two = {**RECOGNIZERS, "ArcFace": {"weights_sha256": "a" * 64}}
    more = fp.fingerprint(settings(recognizers="Facenet,ArcFace"), "run", MODEL, two, "cpu")
    with pytest.raises(RefusedRerun, match="--recognizers"):  # the list itself is recorded, as before
        check_rerun(recorded(on_cpu), more, has_outputs=True)
    other = fp.fingerprint(job, "run", MODEL, {"Facenet": {"weights_sha256": "0" * 64}}, "cpu")
    with pytest.raises(RefusedRerun, match="Facenet weight file"):
        check_rerun(recorded(on_cpu), other, has_outputs=True)


# run.json's determines_outputs as the version before pipeline.settings.fingerprint wrote it
# (pipeline.folder.provenance's
# hand-written output_settings), for a whole-image `boomerang run`.
VERSION_1 = {
    "model_weights": "c0ffee",
    "prompt": "picture of a person",
    "negative_prompt": "",
    "guidance_scale": 7.5,
    "steps": 50,
    "scheduler": "dpm++",
    "resolution": None,
    "latent": "mode",
    "dtype": None,
    "model_batch": 4,
    "seed": 0,
    "recognizers": ["Facenet"],
    "recognizer_weights": {"Facenet": "f" * 64},
    "detector": "opencv",
    "engine": "pytorch",
    "align": True,
    "metric": "cosine",
    "no_face_anonymized": "original_box",
}


def test_folders_written_by_the_previous_version_resume_and_refuse_a_region_switch():
    record = {"determines_outputs": dict(VERSION_1)}
    for device in (None, "cpu"):
        check_rerun(record, fp.fingerprint(settings(), "run", MODEL, RECOGNIZERS, device), has_outputs=True)
    # The old version recorded region keys only in region mode; a missing one means the whole image.
    with pytest.raises(RefusedRerun, match="^--region differs .*recorded 'image', now 'faces'"):
        check_rerun(record, fp.fingerprint(settings(region="faces"), "run", MODEL, RECOGNIZERS), has_outputs=True)
    region_record = {
        "determines_outputs": {
            **VERSION_1,
            **{"region": "faces", "region_detector": "opencv", "region_margin": 0.4, "region_feather": 0.2},
            "no_face": "withhold",
        }
    }
    # Its faces were seeded on the workers by the secret itself (before fingerprint.PART_SEED_SCHEME): not resumed,
    # so no folder mixes the two seedings.
    faces = fp.fingerprint(settings(region="faces"), "run", MODEL, RECOGNIZERS)
    with pytest.raises(RefusedRerun, match="^the seeding of faces and tiles .*recorded 'secret-per-part'"):
        check_rerun(region_record, faces, has_outputs=True)
    with pytest.raises(RefusedRerun, match="^--region differs .*recorded 'faces', now 'image'"):
        check_rerun(region_record, fp.fingerprint(settings(), "run", MODEL, RECOGNIZERS), has_outputs=True)
    with pytest.raises(RefusedRerun, match="^--steps differs"):
        check_rerun(record, fp.fingerprint(settings(steps=6), "run", MODEL, RECOGNIZERS), has_outputs=True)
    # Merged into a new record, the old keys are renamed, not kept beside the new ones.
    upgraded = dict(record)
    record_fingerprint(upgraded, fp.fingerprint(settings(), "run", MODEL, RECOGNIZERS, "cpu"))
    assert "steps" not in upgraded["determines_outputs"] and upgraded["determines_outputs"]["sampler.steps"] == 50


def test_each_refusal_names_a_flag_the_command_line_has():
    from pipeline.cli import make_parser

    parser = make_parser()
    options = {
        option
        for action in parser._subparsers._group_actions
        for sub in action.choices.values()
        for sub_action in sub._actions
        for option in sub_action.option_strings
    }
    job = replace(settings(region="faces"), enhance=EnhanceSettings())
    for key in fp.fingerprint(job, "run", MODEL, RECOGNIZERS, "cpu"):
        flag = fp.flag_for(key)
        if flag.startswith("--"):
            assert flag.split()[0] in options, f"{key} -> {flag}, which pipeline/cli.py does not have"
        else:  # config-file keys and the enhance command itself
            assert key in ("evaluation.align", "evaluation.metric", "enhance", "recognizer_weights", "seed_scheme"), key


def test_the_recorded_dtype_is_the_one_the_model_loads_in():
    import torch

    from anonymize.loading import _default_dtype

    for device in ("cpu", "cuda"):
        expected = str(_default_dtype(torch.device(device))).removeprefix("torch.")
        assert fp.torch_dtype(None, device) == expected
    assert fp.torch_dtype("bfloat16", "cpu") == "bfloat16"
    assert fp.anonymize_device(None, 0.0) == "cpu" and fp.anonymize_device(None, 0.75) == "cuda"
    assert fp.anonymize_device("cuda:1", 0.0) == "cuda:1"


FAST = ["--levels", "0.5", "--steps", "4"]


@pytest.mark.slow
def test_region_and_whole_image_reruns_on_one_folder_are_refused_end_to_end(cli, tmp_path):
    data = tmp_path / "in"
    write_faces(data, 2, size=(64, 64))
    region, whole = tmp_path / "region", tmp_path / "whole"
    assert cli("run", str(data), "--out", str(region), "--region", "faces", *FAST)[0] == 0
    # The gate without the region flags would release the region-mode outputs with no --accept-scene-linkage.
    status, stdout, err = cli("run", str(data), "--out", str(region), "--gate", "--ladder", "0.5,1.0", "--steps", "4")
    assert status == 2 and not stdout and len(err.strip().splitlines()) == 1 and "--region" in err, err
    assert not (region / "release").exists()

    assert cli("run", str(data), "--out", str(whole), *FAST)[0] == 0
    status, stdout, err = cli("run", str(data), "--out", str(whole), "--region", "faces", *FAST)
    assert status == 2 and not stdout and len(err.strip().splitlines()) == 1 and "--region" in err, err

    # The device and dtype the anonymize actors used are in the record, with a digest of the whole.
    record = json.loads((whole / "run.json").read_text())
    determining = record["determines_outputs"]
    assert (determining["sampler.device"], determining["sampler.dtype"]) == ("cpu", "float32")
    assert determining["region.mode"] == "image" and record["determines_outputs_digest"] == fp.digest(determining)
    assert json.loads((region / "run.json").read_text())["determines_outputs"]["region.mode"] == "faces"
