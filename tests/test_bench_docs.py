"""Every benchmark command quoted in docs/ is one its script accepts today: the flags and values
parse with the script's own parser. A renamed or removed flag fails here, not for the reader who copies the
command (test_bench_smoke.py runs each script; this checks what the document tells people to type).

The scripts are run as `python -m bench.<name>` would run them, in one process, each stopped right after its
arguments are parsed (its measurement is not the point, and takes minutes to hours at the quoted sizes).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))

# `python -m bench.NAME ARGS` or `python bench/NAME.py ARGS`, up to the end of the span, a comment or a pipe.
_COMMAND = re.compile(r"python(?:3)? (?:-m bench\.(\w+)|bench/(\w+)\.py)([^`#|\n]*)")

_PARSE_ONLY = r"""
import argparse, json, runpy, sys

class Parsed(Exception):
    pass

parse_args = argparse.ArgumentParser.parse_args

def parse_then_stop(self, args=None, namespace=None):
    parse_args(self, args, namespace)
    raise Parsed

argparse.ArgumentParser.parse_args = parse_then_stop
results = []
for name, argv in json.loads(sys.argv[1]):
    sys.argv = [f"bench/{name}.py", *argv]
    try:
        runpy.run_module(f"bench.{name}", run_name="__main__")
        outcome = "ran to the end without parsing its arguments"
    except Parsed:
        outcome = "ok"
    except SystemExit as exit:
        outcome = f"exit {exit.code}"
    results.append(outcome)
print(json.dumps(results))
"""


def quoted_commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, arguments) for each benchmark command in `text`: a line of a code block (fenced or indented),
    or an inline code span, read whole when it wraps over two lines."""
    code, prose, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            code.append(line)
        else:
            prose.append(line)
    spans = re.findall(r"`([^`]+)`", "\n".join(prose))
    commands = []
    for snippet in [*code, *(span.replace("\n", " ") for span in spans)]:
        for match in _COMMAND.finditer(snippet):
            commands.append((match.group(1) or match.group(2), shlex.split(match.group(3))))
    return commands


def _documented() -> list[tuple[str, list[str]]]:
    return [command for doc in DOCS for command in quoted_commands(doc.read_text())]


def test_the_quoted_commands_are_found():
    commands = _documented()
    scripts = {name for name, _ in commands}
    # The document quotes the measurements of most scripts; a regex that stopped matching would pass vacuously.
    assert len(commands) >= 20 and {"bookkeeping", "pipeline_overhead", "attacks", "resume"} <= scripts
    assert ("bookkeeping", ["--n", "10000000", "--repeats", "1"]) in commands


def test_every_benchmark_command_in_the_docs_parses_with_its_script():
    commands = _documented()
    result = subprocess.run(
        [sys.executable, "-c", _PARSE_ONLY, json.dumps(commands)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    failed = [
        f"python -m bench.{name} {' '.join(argv)}: {outcome}"
        for (name, argv), outcome in zip(commands, outcomes, strict=True)
        if outcome != "ok"
    ]
    assert not failed, "\n".join(failed) + "\n" + result.stderr[-3000:]
