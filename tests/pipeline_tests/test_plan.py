"""Defaults that fill the machine, and paths that mean the same on every worker."""

from __future__ import annotations

import os

import pytest

from pipeline.execution.actors import ActorPlan, plan_actors, plan_evaluation
from pipeline.settings.config import build_settings


@pytest.mark.parametrize(
    ("cpus", "gpus", "flags", "expected"),
    [
        # CPU-only: one actor per CPU, a quarter (at least one) of them evaluating.
        (2, 0, {}, ActorPlan(1, 1, 0.0, 0.5)),
        (16, 0, {}, ActorPlan(12, 4, 0.0, 0.5)),
        (1, 0, {}, ActorPlan(1, 1, 0.0, 0.25)),
        # Anonymize only: every CPU anonymizes, next to one writer actor; all of them together reserve
        # half the CPUs in Ray's accounting, leaving room for Ray Data's tasks.
        (2, 0, {"evaluated": False}, ActorPlan(2, 0, 0.0, 1 / 3)),
        (16, 0, {"evaluated": False}, ActorPlan(16, 0, 0.0, 8 / 17)),
        # What is given is kept; the other pool takes the CPUs left.
        (16, 0, {"workers": 4}, ActorPlan(4, 12, 0.0, 0.5)),
        (16, 0, {"eval_workers": 2}, ActorPlan(14, 2, 0.0, 0.5)),
        (16, 0, {"workers": 3, "eval_workers": 2}, ActorPlan(3, 2, 0.0, 0.5)),
        # GPUs: one anonymize actor per GPU and one evaluation actor next to it, sharing it (0.75 / 0.25).
        (32, 8, {}, ActorPlan(8, 8, 0.75, 0.5, 0.25)),
        (8, 1, {}, ActorPlan(1, 1, 0.75, 0.5, 0.25)),
        (32, 8, {"evaluated": False}, ActorPlan(8, 0, 1.0, 0.5)),
        (32, 8, {"eval_gpus_per_worker": 0.5}, ActorPlan(8, 8, 0.5, 0.5, 0.5)),
        # Evaluation on CPUs (asked, or next to an explicit anonymize share): the CPUs left evaluate.
        (32, 8, {"eval_gpus_per_worker": 0.0}, ActorPlan(8, 24, 1.0, 0.5)),
        (32, 8, {"gpus_per_worker": 0.5}, ActorPlan(16, 16, 0.5, 0.5)),
        (32, 8, {"gpus_per_worker": 0.0}, ActorPlan(24, 8, 0.0, 0.5)),
    ],
)
def test_the_default_plan_fills_the_machine(cpus, gpus, flags, expected):
    plan = plan_actors(cpus, gpus, **flags)
    assert plan == expected
    assert plan.cpus_per_actor * (plan.anonymize + max(plan.evaluate, 1)) <= cpus / 2 + 1e-9
    # Never more GPU asked for than the cluster has: the actors would wait for it forever.
    assert plan.anonymize * plan.gpus_per_anonymize + plan.evaluate * plan.gpus_per_evaluate <= gpus + 1e-9


@pytest.mark.parametrize(
    ("cpus", "gpus", "flags", "expected"),
    [
        # `boomerang evaluate` runs nothing else: every CPU evaluates, or two actors share each GPU.
        (2, 0, {}, ActorPlan(0, 2, 0.0, 0.5)),
        (16, 0, {}, ActorPlan(0, 16, 0.0, 0.5)),
        (32, 8, {}, ActorPlan(0, 16, 0.0, 0.5, 0.5)),
        (32, 8, {"eval_gpus_per_worker": 0.25}, ActorPlan(0, 32, 0.0, 0.5, 0.25)),
        (32, 8, {"eval_gpus_per_worker": 0.0}, ActorPlan(0, 32, 0.0, 0.5)),
        (16, 0, {"eval_workers": 3}, ActorPlan(0, 3, 0.0, 0.5)),
    ],
)
def test_evaluation_alone_fills_the_machine(cpus, gpus, flags, expected):
    plan = plan_evaluation(cpus, gpus, **flags)
    assert plan == expected
    assert plan.cpus_per_actor * plan.evaluate <= cpus / 2 + 1e-9
    assert plan.evaluate * plan.gpus_per_evaluate <= gpus + 1e-9


def test_the_plan_reads_as_doctor_prints_it():
    assert plan_actors(16, 0).describe() == (
        "12 anonymize actors (1 CPU thread each), 4 evaluation actors (1 CPU thread each)"
    )
    assert plan_actors(8, 1).describe() == "1 anonymize actor (0.75 GPU each), 1 evaluation actor (0.25 GPU each)"
    assert plan_actors(8, 1, eval_gpus_per_worker=0).describe() == (
        "1 anonymize actor (1 GPU each), 7 evaluation actors (1 CPU thread each)"
    )


def test_local_paths_are_made_absolute_before_anything_reaches_a_worker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "sd").mkdir(parents=True)
    settings = build_settings(
        {"input": "faces", "out": "runs/one", "model": "models/sd", "deepface_home": "~/df", "secret_file": "s"}
    )
    assert settings.input == str(tmp_path / "faces") and settings.out == str(tmp_path / "runs" / "one")
    assert settings.sampler.model == str(tmp_path / "models" / "sd")
    assert settings.deepface_home == os.path.expanduser("~/df") and settings.secret_file == str(tmp_path / "s")
    # URLs and hub ids mean the same everywhere: left as they are.
    remote = build_settings({"input": "s3://bucket/faces", "out": "gs://bucket/run", "model": "org/some-model"})
    assert (remote.input, remote.out) == ("s3://bucket/faces", "gs://bucket/run")
    assert remote.sampler.model == "org/some-model"
