"""Headless Chromium helpers for the report tests: where a page's verdict line ends on its first screen."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FIRST_SCREEN = (1280, 800)


def verdict_bottom(page: Path, tmp_path: Path) -> float:
    """Where the verdict line ends (CSS px from the top) when headless Chromium lays `page` out in a first
    screen of FIRST_SCREEN: a copy of the page with a script that writes it into the DOM Chromium dumps."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install chromium)")
    probe = tmp_path / f"probe-{abs(hash(str(page)))}.html"
    script = (
        "<script>window.addEventListener('load',()=>{const r=document.querySelector('p.verdict')"
        ".getBoundingClientRect();const m=document.createElement('meta');m.id='verdict-bottom';"
        "m.content=String(r.bottom);document.head.appendChild(m);});</script>"
    )
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={FIRST_SCREEN[0]},{FIRST_SCREEN[1]}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probe.as_uri(),
    ]
    dom = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'id="verdict-bottom" content="([0-9.]+)"', dom)
    assert found, "the probe found no verdict line"
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    return float(found.group(1))
