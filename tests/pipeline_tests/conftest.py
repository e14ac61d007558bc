"""Fixtures for end-to-end runs of the `boomerang` command line on small real inputs."""

from __future__ import annotations

import pytest


@pytest.fixture
def cli(ray_runtime, deepface_home, tiny_sd, capsys):
    """Run `boomerang` in-process with the tiny model and random recognizers; returns (status, stdout, stderr)."""
    from pipeline.cli import main

    def run(*argv: str, model: bool = True, recognizers: str = "Facenet"):
        args = list(argv)
        command = args[0]
        if model and command in ("run", "anonymize", "augment", "enhance"):
            args += ["--model", str(tiny_sd)]
        if command in ("run", "anonymize", "augment", "enhance") and "--steps" not in args:
            args += ["--steps", "10"]
        if command in ("run", "evaluate"):
            args += ["--deepface-home", str(deepface_home)]
            if "--recognizers" not in args:
                args += ["--recognizers", recognizers]
            if "--detector" not in args:
                args += ["--detector", "skip"]
                # Tests' random faces need no detector; a gate run must then name the rule it breaks.
                if "--gate" in args:
                    if "--gate-override" in args:
                        i = args.index("--gate-override") + 1
                        args[i] += ",detector-skip"
                    else:
                        args += ["--gate-override", "detector-skip"]
        try:
            status = main(args)
        except SystemExit as stop:  # argparse refusing the command line (a flag the command does not offer): 2
            status = stop.code
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run
