"""The `boomerang` command line: `main(argv)` so tests call it in-process.

Exit status: 0 when the job finished (some images may have failed: they are rows with an error);
2 with one line on stderr when the job could not run (bad flag, missing weights, no input, a rerun
with changed settings, a folder in use); 1 with one line when it started and then failed (disk full,
cluster lost) or was interrupted: a rerun resumes; 3 with --strict when some rows failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

EXIT_CANNOT_RUN = 2
EXIT_FAILED = 1

# Flags whose value is a list given as "a,b,c".
_COMMON_HELP = "Settings may also come from --config FILE (TOML or YAML); flags override it."


def _add_job_flags(parser: argparse.ArgumentParser, *, sampler: bool, evaluation: bool) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; resumed if it holds a run)")
    parser.add_argument("--config", help="TOML or YAML file with the same settings as the flags")
    parser.add_argument("--overwrite", action="store_true", default=None, help="start afresh in --out")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")
    parser.add_argument("--levels", "--level", dest="levels", help="anonymity level(s) t_boom/T, e.g. 0.5,0.7")
    parser.add_argument(
        "--shard-size",
        type=int,
        dest="shard_size",
        help="images per shard, the unit of the output tables: one file per shard per table (default 4096: "
        "10^6 images make about 245 files per table, each compacted from a few hundred batch parts); "
        "fixed by the folder's first run, images added later join the shard of their keyed id",
    )
    parser.add_argument("--seed", type=int, help="run seed (each output's seed derives from it; default 0)")
    parser.add_argument("--max-pixels", type=int, dest="max_pixels", help="refuse larger images (default 50e6)")
    parser.add_argument("--id-column", dest="id_column", help="Parquet input: id column (default id)")
    parser.add_argument("--image-column", dest="image_column", help="Parquet input: image bytes column (default image)")
    parser.add_argument(
        "--identity-from",
        dest="identity_from",
        choices=("folder",),
        help="who is in each image, for the re-identification attack: the parent folder (LFW layout "
        "Person_Name/Person_Name_0001.jpg); kept in private/ only",
    )
    parser.add_argument(
        "--identity-column", dest="identity_column", help="Parquet input: the column that says who is in each image"
    )
    parser.add_argument("--deepface-home", dest="deepface_home", help="parent of .deepface/weights (DEEPFACE_HOME)")
    parser.add_argument(
        "--weights-from",
        dest="weights_from",
        help="fill each node's weights from this store (a folder, http(s) URL or s3://... written by "
        "`boomerang weights push`), verified against its weights.json, before the models load",
    )
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
    if sampler:
        group = parser.add_argument_group("sampler")
        group.add_argument("--model", help="diffusers model: hub id or local folder")
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
    if evaluation:
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
        group.add_argument(
            "--report-withheld",
            action="store_true",
            default=None,
            dest="report_withheld",
            help="gate runs: the internal report also shows withheld outputs (thumbnails); by default only released",
        )
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
    if sampler:
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
    if sampler and evaluation:
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


def _add_forget(sub) -> None:
    """`boomerang forget RUN --ids FILE | --identity NAME`: consent withdrawal (pipeline.forget)."""
    text = "consent withdrawal: remove images' outputs, rows, embeddings and released files from a run folder"
    p = sub.add_parser("forget", help=text, description=text)
    p.add_argument("dir", help="the run's --out folder")
    p.add_argument(
        "--ids",
        help="text file, one image id a line, as the input names it: the path relative to a folder input, the "
        "id column of a Parquet input",
    )
    p.add_argument(
        "--identity",
        action="append",
        default=[],
        help="every image of this person (a run made with --identity-from or --identity-column); repeatable",
    )


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (not usage plus an error)."""

    def error(self, message: str):
        self.exit(EXIT_CANNOT_RUN, f"{self.prog}: {message} (see {self.prog} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="boomerang",
        description="Anonymize face datasets with Boomerang diffusion local sampling and measure the result.",
        epilog=_COMMON_HELP,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text, sampler, evaluation in (
        ("run", "anonymize, evaluate and report in one Ray job", True, True),
        ("anonymize", "the anonymize stage alone", True, False),
    ):
        p = sub.add_parser(name, help=text, description=text, epilog=_COMMON_HELP)
        p.add_argument("input", help="folder of images (recursive) or Parquet dataset; local path or URI")
        _add_job_flags(p, sampler=sampler, evaluation=evaluation)
    text = "data augmentation: --samples K local samples per image, laid out in class folders under train/"
    p = sub.add_parser("augment", help=text, description=text, epilog=_COMMON_HELP)
    p.add_argument("input", help="folder of images in class folders (cats/a.jpg), or a Parquet dataset")
    p.add_argument(
        "--evaluate", action="store_true", help="also measure each sample against its original (default: off)"
    )
    p.add_argument("--label-column", dest="label_column", help="Parquet input: the column holding each image's class")
    _add_job_flags(p, sampler=True, evaluation=True)
    text = "perceptual resolution enhancement: upsample by --scale, then Boomerang at a small level, in tiles"
    p = sub.add_parser("enhance", help=text, description=text, epilog=_COMMON_HELP)
    p.add_argument("input", help="folder of images (recursive) or Parquet dataset; local path or URI")
    p.add_argument("--scale", type=int, help="integer upsampling factor; outputs are exactly this many times larger")
    p.add_argument("--filter", help="resampling filter before the model: lanczos (default), bicubic, bilinear, ...")
    p.add_argument(
        "--tile-overlap",
        type=float,
        dest="tile_overlap",
        help="tiles of the model's size overlap by this fraction of it (default 0.25), blended with a feather",
    )
    p.add_argument(
        "--benchmark",
        action="store_true",
        default=None,
        help="downscale each input by --scale first, then report PSNR and SSIM against it next to plain "
        "Lanczos and bicubic upsampling (a folder INPUT)",
    )
    _add_job_flags(p, sampler=True, evaluation=False)
    p.set_defaults(scale=4)
    for action in p._actions:
        if action.dest == "levels":
            action.help = (
                "level(s) t_boom/T (default 0.2): 0.1-0.3 is the paper's range for enhancement; higher levels "
                "change the content, not only the detail"
            )
    p = sub.add_parser("evaluate", help="the evaluation stage alone, on any anonymizer's output")
    p.add_argument("--originals", required=True, help="the original images (folder or Parquet)")
    p.add_argument(
        "--anonymized",
        required=True,
        help="a boomerang output folder, or a folder with the same relative paths",
    )
    p.add_argument("--label", help="name for these results in place of a level (e.g. the tool's name)")
    _add_job_flags(p, sampler=False, evaluation=True)
    p = sub.add_parser("report", help="rebuild the HTML report and plots from the Parquet files")
    p.add_argument("dir")
    _add_forget(sub)
    p = sub.add_parser("demo", help="the whole job offline on bundled sample faces with tiny random-weight models")
    p.add_argument("--out", required=True)
    p.add_argument("--address")
    p.add_argument("--overwrite", action="store_true")
    _add_weights(sub)
    p = sub.add_parser("doctor", help="what is present: GPUs, Ray, model weights and where they are looked for")
    p.add_argument("--model", help="diffusers model to look for (default: the default model)")
    p.add_argument("--recognizers", help="deepface models to look for")
    p.add_argument("--engine", default="pytorch")
    p.add_argument("--address")
    p.add_argument("--out", help="check a job's output folder or object-store URL: reachable, and which lock it gets")
    p.add_argument("--detector", help="deepface face detector whose files to look for")
    p.add_argument("--region-detector", dest="region_detector", help="face-region detector whose files to look for")
    p.add_argument("--deepface-home", dest="deepface_home", help="parent of .deepface/weights (DEEPFACE_HOME)")
    return parser


def _add_weights(sub) -> None:
    """`boomerang weights fetch|push` (pipeline.weights)."""
    p = sub.add_parser("weights", help="fetch, verify and push the weight files a job needs")
    actions = p.add_subparsers(dest="weights_command", required=True)
    fetch = actions.add_parser(
        "fetch",
        help="put every file a job with these settings needs where it looks for it, each sha256 in weights.json "
        "(deepface's download sources, or $BOOMERANG_WEIGHTS_MIRROR/<file>; the Hugging Face hub)",
    )
    push = actions.add_parser("push", help="copy the files a job needs, and weights.json, to DEST")
    push.add_argument("dest", help="a folder or an fsspec URL (s3://bucket/weights)")
    for q in (fetch, push):
        q.add_argument("--recognizers", help="deepface models, e.g. VGG-Face,Facenet (default: the job default)")
        q.add_argument("--detector", help="deepface detector of the evaluation (default opencv: no file)")
        q.add_argument("--region-detector", dest="region_detector", help="face-region detector (--region faces)")
        q.add_argument("--engine", default="pytorch", help="deepface backend engine: pytorch (default) or onnx")
        q.add_argument("--model", help="diffusers model: hub id or local folder (default: the job default)")
        q.add_argument("--revision", help="hub revision of --model")
        q.add_argument("--deepface-home", dest="deepface_home", help="parent of .deepface/weights (DEEPFACE_HOME)")
        q.add_argument("--allow-pickle", action="store_true", dest="allow_pickle", help="include .bin weights")
        q.add_argument("--no-model", action="store_true", dest="no_model", help="deepface files only")
    fetch.add_argument("--variant", help="hub weights variant, e.g. fp16 (where the model has one)")
    fetch.add_argument(
        "--from",
        dest="source",
        help="a store written by `weights push` (folder, http(s) base URL, s3://...) instead of the public sources",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = make_parser().parse_args(argv)
    # transformers 5 warns on stderr, once per process, that its image processors want torchvision; boomerang
    # never uses them (no feature extractor is loaded), and the warning buries the job's own one-line errors.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from . import commands

    previous = _stop_on_sigterm()
    try:
        return commands.dispatch(args)
    except KeyboardInterrupt as err:
        reason = "terminated" if isinstance(err, commands.Terminated) else "interrupted"
        from .messages import interrupt_line

        print(interrupt_line(reason, getattr(err, "kept", None)), file=sys.stderr)
        return 130
    except commands.CANNOT_RUN as err:
        print(f"boomerang: {_one_line(err)}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except (commands.JobFailed, commands.ClusterUnavailable) as err:
        print(f"boomerang: {_one_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm():
    """SIGTERM (a scheduler stopping the job) ends it like Ctrl-C: recorded as interrupted, resumable."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    from .commands import Terminated

    def stop(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, stop)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def run() -> None:
    """The `boomerang` command: `main`, then leave at once.

    By the time `main` returns, everything is written and Ray is disconnected (or shut down). A process that
    had joined a cluster with `--address` was seen to hang in the interpreter's teardown after printing its
    closing lines (native threads of Ray and torch); the exit status is what counts, so the streams are
    flushed and the process ends without that teardown.
    """
    import os

    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    run()
