"""The flags of the job commands, one declaration per setting, each offered only by the commands that use it
(pipeline.cli builds the parsers); a flag's value lands in the settings under its own name
(pipeline.settings.config.build_settings).

A flag belongs to the part of the job that reads its setting (`PARTS`), and each command offers the flags of
the parts it runs (`COMMAND_PARTS`): `augment --help` shows no gate flag, `enhance --help` no evaluation, face
region or identity flag. A flag a command does not offer is refused by argparse in one line (exit 2), and a
`--config` key it does not offer is refused in one line too (`check_config`): a setting that would do
nothing is never taken silently.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

JOB = "job"  # every job: where, resume, weights store, exit status
SAMPLER = "sampler"  # anonymization: levels, seed, the diffusers sampler, its actors
DEEPFACE = "deepface"  # a deepface model runs: evaluation, or the face-region detector
EVALUATION = "evaluation"  # recognizers compare each output with its original
ATTACKS = "attacks"  # the re-identification attack (evaluation's embeddings, labelled by person)
REGIONS = "regions"  # face-region mode: where the faces are
FACE_SAMPLER = "face sampler"  # face-region mode's anonymization: blend, faceless images
GATE = "gate"  # the release gate (needs the sampler and evaluation)

# The parts each job command runs, hence the flags it offers. enhance runs the sampler alone (no evaluation, no
# faces: it refuses --region faces); evaluate no sampler (its levels come from the anonymized folder); only
# run has the gate (anonymize has no evaluation, augment makes training data, not a release).
COMMAND_PARTS: dict[str, tuple[str, ...]] = {
    "run": (JOB, SAMPLER, DEEPFACE, EVALUATION, ATTACKS, REGIONS, FACE_SAMPLER, GATE),
    "anonymize": (JOB, SAMPLER, DEEPFACE, REGIONS, FACE_SAMPLER),
    "augment": (JOB, SAMPLER, DEEPFACE, EVALUATION, ATTACKS, REGIONS, FACE_SAMPLER),
    "enhance": (JOB, SAMPLER),
    "evaluate": (JOB, DEEPFACE, EVALUATION, ATTACKS, REGIONS),
}

# Settings a config file may hold that have no flag, by the part that reads them.
CONFIG_ONLY: dict[str, tuple[str, ...]] = {SAMPLER: ("level",), EVALUATION: ("metric", "align")}


def add_job_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of the settings `command` uses (`COMMAND_PARTS`), in its help's order."""
    for part in COMMAND_PARTS[command]:
        PARTS[part](parser)


@functools.cache
def part_settings(part: str) -> frozenset[str]:
    """The settings (flag destinations) of one part's flags."""
    parser = argparse.ArgumentParser(add_help=False)
    PARTS[part](parser)
    return frozenset(a.dest for a in parser._actions)


def command_settings(parser: argparse.ArgumentParser) -> dict[str, frozenset[str]]:
    """Job command -> the settings its flags set (its own flags included: enhance's --scale, evaluate's --label),
    read from the parser `pipeline.cli.make_parser` built."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: frozenset(a.dest for a in sub.choices[name]._actions if a.dest != "help")
        | {key for part in parts for key in CONFIG_ONLY.get(part, ())}
        for name, parts in COMMAND_PARTS.items()
    }


def check_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, in one line (SettingsError), a --config file that sets what this command does not use: a key
    another job command has a flag for, but this one has not. Keys no command knows are left to
    pipeline.settings.config ("unknown setting")."""
    if args.command not in COMMAND_PARTS or not getattr(args, "config", None):
        return
    from pipeline.settings.config import SettingsError, load_config_file

    settings = command_settings(parser)
    mine = settings[args.command]
    known = set().union(*settings.values())
    foreign = sorted(key for key in load_config_file(args.config) if key in known - mine)
    if foreign:
        users = [name for name, its in settings.items() if name != args.command and its & set(foreign)]
        raise SettingsError(
            f"--config {args.config}: boomerang {args.command} does not use {', '.join(foreign)} (settings of "
            f"{', '.join(users)}); remove them, or keep a config file per command"
        )


def _job(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; resumed if it holds a run)")
    parser.add_argument("--config", help="TOML or YAML file with the same settings as the flags")
    parser.add_argument("--overwrite", action="store_true", default=None, help="start afresh in --out")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    parser.add_argument(
        "--shard-size",
        type=int,
        dest="shard_size",
        help="images per shard, the unit of the output tables: one file per shard per table (default 4096: "
        "10^6 images make about 245 files per table, each compacted from a few hundred batch parts); "
        "fixed by the folder's first run, images added later join the shard of their keyed id",
    )
    parser.add_argument("--max-pixels", type=int, dest="max_pixels", help="refuse larger images (default 50e6)")
    parser.add_argument("--id-column", dest="id_column", help="Parquet input: id column (default id)")
    parser.add_argument("--image-column", dest="image_column", help="Parquet input: image bytes column (default image)")
    _weights_from(parser)
    parser.add_argument(
        "--secret-file",
        dest="secret_file",
        help="reuse a run's secret (its private/secret) to reproduce that run's outputs exactly in a new --out",
    )
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        default=None,
        dest="retry_errors",
        help="redo every failed row (a rerun always redoes transient failures and files that changed)",
    )
    parser.add_argument(
        "--strict", action="store_true", default=None, help="exit status 3 when any row failed (default: 0)"
    )
    parser.add_argument(
        "--shared-filesystem-lock",
        action="store_true",
        default=None,
        dest="shared_filesystem_lock",
        help="allow a local --out on a network or FUSE filesystem (NFS, SMB, a mounted bucket): only if one "
        "machine writes there or its locks reach every machine",
    )


def _sampler(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampler")
    group.add_argument("--levels", "--level", dest="levels", help="anonymity level(s) t_boom/T, e.g. 0.5,0.7")
    group.add_argument("--seed", type=int, help="run seed (each output's seed derives from it; default 0)")
    _model(group)
    group.add_argument("--prompt")
    group.add_argument("--negative-prompt", dest="negative_prompt")
    group.add_argument("--guidance-scale", type=float, dest="guidance_scale")
    group.add_argument("--steps", type=int, help="inference steps over the full schedule (default 50)")
    group.add_argument("--scheduler", help="dpm++ (default), ddim or ddpm (ancestral)")
    group.add_argument("--resolution", type=int, help="model resolution (default: the model's own)")
    group.add_argument("--latent", help="mode (default, as the paper) or sample (as diffusers img2img)")
    group.add_argument(
        "--allow-pickle",
        action="store_true",
        default=None,
        dest="allow_pickle",
        help="accept pickle (.bin/.ckpt) weights; only for files you trust",
    )
    group.add_argument("--device")
    group.add_argument("--dtype")
    group.add_argument("--revision")
    group.add_argument(
        "--samples",
        type=int,
        help="local samples per image and level (data augmentation; default 1): each its own generator, "
        "output and manifest row; raising it on a rerun adds samples",
    )
    group.add_argument("--batch-size", type=int, dest="batch_size", help="images per Ray task (default 4)")
    group.add_argument(
        "--model-batch",
        type=int,
        dest="model_batch",
        help="images per model call, padded to this fixed size so bytes never depend on batching (default 4)",
    )
    group.add_argument(
        "--workers",
        type=int,
        help="anonymize actors (default: fill the machine: one per GPU, or with evaluation three quarters "
        "of the CPUs, one torch thread each; `boomerang doctor` prints the plan)",
    )
    group.add_argument(
        "--gpus-per-worker",
        type=float,
        dest="gpus_per_worker",
        help="GPUs per anonymize actor (default 1 where the cluster has GPUs, else 0)",
    )


def _deepface(parser) -> None:
    parser.add_argument("--deepface-home", dest="deepface_home", help="parent of .deepface/weights (DEEPFACE_HOME)")


def _model(parser) -> None:
    parser.add_argument("--model", help="diffusers model: hub id or local folder")


def _weights_from(parser) -> None:
    parser.add_argument(
        "--weights-from",
        dest="weights_from",
        help="fill each node's weights from this store (a folder, http(s) URL or s3://... written by "
        "`boomerang weights push`), verified against its weights.json, before the models load",
    )


def add_weight_flags(parser: argparse.ArgumentParser) -> None:
    """`boomerang doctor`: where `run` finds its weights, with run's own flags."""
    _model(parser)
    _deepface(parser)
    _weights_from(parser)


def _evaluation(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument("--recognizers", help="deepface models, e.g. VGG-Face,Facenet (default)")
    group.add_argument("--threshold", type=float, help="cleared means distance > threshold (default 0.4)")
    group.add_argument("--thresholds", help="per-recognizer thresholds, e.g. VGG-Face=0.68,Facenet=0.4")
    group.add_argument("--detector", help="deepface detector: opencv (default), skip, ...")
    group.add_argument("--engine", help="deepface backend engine: pytorch (default) or onnx")
    group.add_argument(
        "--no-face-anonymized",
        dest="no_face_anonymized",
        choices=("original_box", "whole_image"),
        help="where an anonymized image with no detected face is compared: at the original's face box "
        "(default; an attacker knows where the face was) or on the whole image (deepface's fallback)",
    )
    group.add_argument(
        "--eval-workers",
        type=int,
        dest="eval_workers",
        help="evaluation actors (default: the CPUs the anonymize actors leave, at least one)",
    )
    group.add_argument(
        "--eval-gpus-per-worker",
        type=float,
        dest="eval_gpus_per_worker",
        help="share of a GPU per evaluation actor (default 0.25 where the cluster has GPUs, one evaluation "
        "actor per GPU next to its anonymize actor; 0 evaluates on CPUs)",
    )
    group.add_argument("--eval-batch-size", type=int, dest="eval_batch_size")
    group.add_argument("--report-originals", action="store_true", default=None, dest="report_originals")


def _attacks(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("re-identification attack")
    group.add_argument(
        "--identity-from",
        dest="identity_from",
        choices=("folder",),
        help="who is in each image, for the re-identification attack: the parent folder (LFW layout "
        "Person_Name/Person_Name_0001.jpg); kept in private/ only",
    )
    group.add_argument(
        "--identity-column", dest="identity_column", help="Parquet input: the column that says who is in each image"
    )


def _regions(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("face regions")
    group.add_argument(
        "--region",
        choices=("image", "faces"),
        help="where Boomerang runs: the whole image (default, the paper's setting, for face crops) or each "
        "detected face of any photo, leaving every other pixel as it was; evaluation is then per face",
    )
    group.add_argument(
        "--region-detector",
        dest="region_detector",
        help="deepface face detector that finds the faces (default opencv, offline; dlib with the extra "
        "'regions-dlib' installed; any deepface detector name)",
    )
    group.add_argument(
        "--region-margin",
        type=float,
        dest="region_margin",
        help="grow each face box by this fraction of its side on every side before resampling (default 0.4: "
        "the square then holds hair, ears, jaw and chin)",
    )


def _face_sampler(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("face-region sampling")
    group.add_argument(
        "--region-feather",
        type=float,
        dest="region_feather",
        help="width of the blend back into the photo, as a fraction of the square (default 0.2)",
    )
    group.add_argument(
        "--no-face",
        dest="no_face",
        choices=("withhold", "image"),
        help="an image where no face is found: no output, status no_face_detected (default: a detector "
        "miss must not publish a face), or whole-image Boomerang",
    )


def _gate(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("release gate")
    group.add_argument(
        "--gate",
        action="store_true",
        default=None,
        help="raise each image's level along --ladder until every recognizer clears it",
    )
    group.add_argument("--ladder", help="gate levels (default 0.5,0.6,0.7,0.8,0.9,1.0)")
    group.add_argument(
        "--gate-thresholds",
        dest="gate_thresholds",
        help="per-recognizer gate thresholds, e.g. VGG-Face=0.9; one LOWER than deepface's own is refused "
        "without --gate-override thresholds (default: the stricter of --threshold and deepface's own threshold)",
    )
    group.add_argument(
        "--accept-scene-linkage",
        action="store_true",
        default=None,
        dest="accept_scene_linkage",
        help="with --region faces: release anyway, although every pixel outside the faces is the original's, "
        "so the release links to its source photos for anyone who holds them (docs/privacy.md)",
    )
    group.add_argument(
        "--gate-override",
        dest="gate_override",
        help="let --gate run although it breaks the named rule(s) of its policy, comma-separated: "
        "detector-skip (--detector skip), whole-image (--no-face-anonymized whole_image), samples "
        "(--samples > 1: best-of-K against the judge), thresholds (--gate-thresholds below deepface's own); "
        "each one in effect is stated first in both reports and in run.json",
    )
    group.add_argument(
        "--gate-max-linkage",
        type=int,
        dest="gate_max_linkage",
        help="also withhold, level by level, an output whose own original any recognizer ranks within the "
        "top R of all originals (the linkage attack; e.g. 1: not nearest to its own original)",
    )
    group.add_argument(
        "--report-withheld",
        action="store_true",
        default=None,
        dest="report_withheld",
        help="the internal report also shows withheld outputs (thumbnails); by default only released",
    )


PARTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    JOB: _job,
    SAMPLER: _sampler,
    DEEPFACE: _deepface,
    EVALUATION: _evaluation,
    ATTACKS: _attacks,
    REGIONS: _regions,
    FACE_SAMPLER: _face_sampler,
    GATE: _gate,
}
