"""Shared benchmark helpers: inputs, the `boomerang` CLI in a subprocess, PSS sampling, results files.

Benchmarks are not tests: they print a table and write bench/results/<name>.json (gitignored); the
figures worth keeping go into docs/benchmarks.md with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / ".cache" / "bench"
BOOMERANG = [sys.executable, "-m", "pipeline.cli"]

# The same offline settings the tests use: PyTorch deepface engine, no hub, no uv runtime env in Ray.
ENV = {"DEEPFACE_BACKEND_ENGINE": "pytorch", "HF_HUB_OFFLINE": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
os.environ.update({k: os.environ.get(k, v) for k, v in ENV.items()})


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads (default: all cores) and return the number.

    Deliberately, always: more OpenMP threads than free cores spin against each other and run 10-20x slower.
    """
    import torch

    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def write_faces(folder: Path, n: int, size: tuple[int, int] = (96, 96)) -> list[str]:
    """n face photos in an LFW-style tree (the test suite's own sample maker); returns their ids."""
    sys.path.insert(0, str(ROOT / "tests"))
    from samples import write_faces as _write

    if folder.is_dir() and len(list(folder.rglob("*.jpg"))) == n:
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.jpg"))
    return _write(folder, n, size)


def children_by_parent() -> dict[int, list[int]]:
    """Every live process's pid under its parent's pid, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree_pss_mib(root_pid: int) -> float:
    """Sum of PSS over ``root_pid`` and all its descendants (the driver, raylet, GCS and Ray workers)."""
    children = children_by_parent()
    total_kib, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total_kib += int(line.split()[1])
                        break
        except OSError:
            continue  # the process ended between listing and reading
    return total_kib / 1024


class PssSampler:
    """Samples ``tree_pss_mib(pid)`` in a thread every ``interval`` seconds; ``peak`` is the maximum."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_mib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_cli(argv: list[str], *, pss: bool = False, timeout: float = 3600) -> dict:
    """Run `boomerang ARGV` as its own process (its own embedded Ray); returns wall time, status, peak PSS.

    Also returns when each batch finished, relative to the start, from which the steady-state throughput
    (first batch to last) and the start-up time are derived: each batch's manifest part as it appears
    (`PartWatcher`; a finished shard's parts are compacted into one file before the job ends, issue 16, so
    they are watched during the run, not listed after it).
    """
    started_wall = time.time()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*BOOMERANG, *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sampler = PssSampler(proc.pid) if pss else None
    if sampler:
        sampler.__enter__()
    watcher = PartWatcher(Path(argv[argv.index("--out") + 1]), started_wall)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        watcher.stop()
        if sampler:
            sampler.__exit__()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"boomerang {' '.join(argv)} exited {proc.returncode}: {err.strip()[-2000:]}")
    outdir = Path(argv[argv.index("--out") + 1])
    return {
        "wall_s": wall,
        "peak_pss_mib": sampler.peak if sampler else None,
        "parts": watcher.parts,
        "run_json": json.loads((outdir / "run.json").read_text()),
        "stdout": out,
    }


class PartWatcher:
    """Polls a run folder's manifest for batch parts (`part-00000-<hash>.parquet`) as they appear; `parts` is
    (seconds after the start, rows) per part, by its modification time. A part compacted away before it could
    be read counts the median rows of the others."""

    def __init__(self, out: Path, started_wall: float, every: float = 0.02) -> None:
        self.out, self.started, self.every = out, started_wall, every
        self.seen: dict[str, tuple[float, int | None]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import pyarrow.parquet as pq

        while not self._done.is_set():
            for path in (self.out / "manifest.parquet").glob("part-*-*.parquet"):
                if path.name in self.seen:
                    continue
                try:
                    self.seen[path.name] = (path.stat().st_mtime - self.started, pq.ParquetFile(path).metadata.num_rows)
                except OSError:  # compacted away between the listing and the read
                    self.seen[path.name] = (time.time() - self.started, None)
            time.sleep(self.every)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    @property
    def parts(self) -> list[tuple[float, int]]:
        known = [rows for _, rows in self.seen.values() if rows is not None]
        fill = int(median(known)) if known else 1
        return sorted((t, rows if rows is not None else fill) for t, rows in self.seen.values())


def steady_state(parts: list[tuple[float, int]]) -> tuple[float, float]:
    """(rows per second from the first part's end to the last part's end, seconds to the first part)."""
    if len(parts) < 2:
        raise ValueError("need at least two manifest parts to measure a steady state; use more images")
    first, last = parts[0][0], parts[-1][0]
    rows_after_first = sum(rows for _, rows in parts[1:])
    return rows_after_first / (last - first), first


def median(values) -> float:
    return statistics.median(values)


def matmul_gflops(threads: int, n: int = 1024, repeats: int = 7) -> float:
    """The machine's dense float32 matmul rate in GFLOP/s at ``threads`` threads (median of repeats)."""
    import torch

    set_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b  # warm up: first calls pay for thread-pool start and page faults
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * n**3 / median(times) / 1e9


def machine() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse(parser: argparse.ArgumentParser, smoke: dict) -> argparse.Namespace:
    """The command line, with `--smoke`: `smoke`'s values replace the sizes, so the script runs in seconds
    through the same product code (CI runs every script this way; its figures mean nothing)."""
    described = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in smoke.items())
    help_text = f"a seconds-long run that proves the script works ({described})"
    parser.add_argument("--smoke", action="store_true", help=help_text)
    args = parser.parse_args()
    if args.smoke:
        for key, value in smoke.items():
            setattr(args, key, value)
    return args


def save(name: str, result: dict) -> Path:
    """Write bench/results/<name>.json (<name>-smoke.json for a --smoke run, which never replaces real figures)
    with the machine description and the exact command line."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'-smoke' if '--smoke' in sys.argv else ''}.json"
    record = {**result, "command": " ".join([Path(sys.executable).name, "-m", f"bench.{name}", *sys.argv[1:]])}
    record["machine"] = machine()
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain fixed-width table (also valid Markdown) of ``rows`` restricted to ``columns``."""

    def cell(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([line, rule, *body])


def overhead_row(batch: int, bare: list[float], bare_all: list[float], run: dict) -> dict:
    """One repeat of a pipeline-vs-bare-loop comparison: seconds and the throughput ratios.

    `bare` and `bare_all` are per-batch seconds of the bare loop (at the actor's threads, at all cores),
    the first batch being a warm-up; `run` is `run_cli`'s result for the pipeline over the same items.
    """
    steady, first_part = steady_state(run["parts"])
    bare_batch = median(bare[1:] or bare)
    return {
        "bare_s": sum(bare),
        "bare_batch_s": bare_batch,
        "bare_all_cores_batch_s": median(bare_all[1:] or bare_all),
        "pipeline_s": run["wall_s"],
        "steady_ratio": steady / (batch / bare_batch),
        # The measure for default flags: the pipeline against one bare loop using every core.
        "steady_vs_all_cores": steady / (batch / median(bare_all[1:] or bare_all)),
        "end_to_end_ratio": sum(bare) / run["wall_s"],
        "startup_s": first_part - median(bare),
    }
