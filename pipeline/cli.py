"""The `boomerang` command line: `main(argv)` so tests call it in-process.

Exit status: 0 when the job finished (some images may have failed: they are rows with an error);
2 with one line on stderr when the job could not run (bad flag, missing weights, no input, a rerun
with changed settings, a folder in use); 1 with one line when it started and then failed (disk full,
cluster lost) or was interrupted: a rerun resumes; 3 with --strict when some rows failed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from pipeline.commands.flags import add_job_flags, add_weight_flags, check_config

EXIT_CANNOT_RUN = 2
EXIT_FAILED = 1

# Every job command's help ends with it.
_COMMON_HELP = "Settings may also come from --config FILE (TOML or YAML); flags override it."


def _add_forget(sub) -> None:
    """`boomerang forget RUN --ids FILE | --identity NAME`: consent withdrawal (pipeline.release.forget)."""
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
    for name, text in (
        ("run", "anonymize, evaluate and report in one Ray job"),
        ("anonymize", "the anonymize stage alone"),
    ):
        p = sub.add_parser(name, help=text, description=text, epilog=_COMMON_HELP)
        p.add_argument("input", help="folder of images (recursive) or Parquet dataset; local path or URI")
        add_job_flags(p, name)
    text = "data augmentation: --samples K local samples per image, laid out in class folders under train/"
    p = sub.add_parser("augment", help=text, description=text, epilog=_COMMON_HELP)
    p.add_argument("input", help="folder of images in class folders (cats/a.jpg), or a Parquet dataset")
    p.add_argument(
        "--evaluate", action="store_true", help="also measure each sample against its original (default: off)"
    )
    p.add_argument("--label-column", dest="label_column", help="Parquet input: the column holding each image's class")
    add_job_flags(p, "augment")
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
    add_job_flags(p, "enhance")
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
    add_job_flags(p, "evaluate")
    p = sub.add_parser("report", help="rebuild the HTML report and plots from the Parquet files")
    p.add_argument("dir")
    _add_forget(sub)
    text = "the whole job offline on bundled sample faces with tiny random-weight models"
    p = sub.add_parser(
        "demo", help=text, description=text, epilog=_demo_reuse(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True)
    p.add_argument("--address")
    p.add_argument("--overwrite", action="store_true")
    _add_weights(sub)
    p = sub.add_parser("doctor", help="what is present: GPUs, Ray, model weights and where they are looked for")
    add_weight_flags(p)  # run's --model, --deepface-home and --weights-from
    p.add_argument("--recognizers", help="deepface models to look for")
    p.add_argument("--engine", default="pytorch")
    p.add_argument("--address")
    p.add_argument("--out", help="check a job's output folder or object-store URL: reachable, and which lock it gets")
    p.add_argument("--detector", help="deepface face detector whose files to look for")
    p.add_argument("--region-detector", dest="region_detector", help="face-region detector whose files to look for")
    return parser


def _demo_reuse() -> str:
    """How `run` reuses the demo's models (README's "Set up and run"); the cache is demo.cache_dir()'s."""
    cache = os.path.join(os.path.expanduser(os.environ.get("BOOMERANG_CACHE") or "~/.cache/boomerang"), "demo")
    return (
        f"The demo keeps its models in {cache} ($BOOMERANG_CACHE/demo). To try `run` on your own folder with\n"
        "them (still random weights: its numbers are not meaningful, and `boomerang doctor` says so):\n\n"
        f"  boomerang run my-faces --out my-run --model {shlex.quote(cache + '/tiny-sd')} \\\n"
        f"      --deepface-home {shlex.quote(cache + '/deepface')} --steps 10"
    )


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
    parser = make_parser()
    args = parser.parse_args(argv)
    # transformers 5 warns on stderr, once per process, that its image processors want torchvision; boomerang
    # never uses them (no feature extractor is loaded), and the warning buries the job's own one-line errors.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from pipeline.commands import common

    previous = _stop_on_sigterm()
    try:
        check_config(parser, args)  # a config key this command does not use: one line, exit 2
        return _command(args.command)(args)
    except KeyboardInterrupt as err:
        reason = "terminated" if isinstance(err, common.Terminated) else "interrupted"
        from pipeline.execution.messages import interrupt_line

        print(interrupt_line(reason, getattr(err, "kept", None)), file=sys.stderr)
        return 130
    except common.CANNOT_RUN as err:
        print(f"boomerang: {_one_line(err)}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except (common.JobFailed, common.ClusterUnavailable) as err:
        print(f"boomerang: {_one_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # noqa: BLE001 - the last line of defence for what no command caught
        if os.environ.get("BOOMERANG_TRACEBACK"):
            raise
        print(f"boomerang: {unexpected_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _command(name: str):
    """The function of one subcommand; demo, doctor and weights' modules are imported only for them."""
    if name == "demo":
        from pipeline.commands.demo import cmd_demo

        return cmd_demo
    if name == "doctor":
        from pipeline.commands.doctor import cmd_doctor

        return cmd_doctor
    if name == "weights":
        from pipeline.commands.weights import cmd_weights

        return cmd_weights
    from pipeline.commands import augment, enhance, evaluate, forget, report, run

    return {
        "run": run.cmd_run,
        "anonymize": run.cmd_anonymize,
        "augment": augment.cmd_augment,
        "enhance": enhance.cmd_enhance,
        "evaluate": evaluate.cmd_evaluate,
        "report": report.cmd_report,
        "forget": forget.cmd_forget,
    }[name]


def _stop_on_sigterm():
    """SIGTERM (a scheduler stopping the job) ends it like Ctrl-C: recorded as interrupted, resumable."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    from pipeline.commands.common import Terminated

    def stop(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, stop)


def unexpected_line(err: BaseException) -> str:
    """An error no command expected, as one line the terminal may show (docs/privacy.md, *Errors*): its type and
    an OS error's fixed text, never its own words (they can quote an input's path, a person's name); the
    traceback only when asked for."""
    from pipeline.execution.job import public_cause

    return (
        f"unexpected error: {public_cause(err)}. Its message is not printed (it can quote your files' names); "
        "run again with BOOMERANG_TRACEBACK=1 to see it, and report it if it persists."
    )


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
