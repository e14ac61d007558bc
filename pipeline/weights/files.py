"""Weight files on a node: their sha256 recorded in a weights.json beside them, installed whole under a per-file
node lock (a killed download leaves nothing behind), downloaded over http(s) or from deepface's own URLs."""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from evaluation.files import fsync_folder, write_atomic
from pipeline.weights.needs import ATTEMPTS, CHUNK, MANIFEST, MIRROR_ENV, Broken, WeightsError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"version": 1, "files": {}}
    data.setdefault("files", {})
    return data


def record_file(folder: Path, rel: str, sha: str, path: Path, source: str | None = None) -> None:
    """Record ``rel``'s sha256 (with size and mtime, so a later check need not hash it again) in folder/weights.json."""
    with node_lock(folder / MANIFEST):
        data = read_manifest(folder)
        stat = path.stat()
        entry = {"sha256": sha, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if source:
            entry["source"] = source
        data["files"][rel] = entry
        write_atomic(folder / MANIFEST, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def recorded_sha(folder: Path, rel: str) -> str | None:
    """The recorded sha256 of folder/rel when the file is still the one recorded (same size and mtime)."""
    entry = read_manifest(folder)["files"].get(rel)
    try:
        stat = (folder / rel).stat()
    except OSError:
        return None
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry.get("sha256")
    return None


def verified_sha(folder: Path, rel: str) -> str | None:
    """folder/rel's sha256: the recorded one when the file is unchanged, else hashed now (None when absent)."""
    path = folder / rel
    if not path.is_file():
        return None
    return recorded_sha(folder, rel) or sha256_of(path)


def lock_file(path: Path) -> Path:
    """The node-level lock of ``path``: in this machine's temporary folder, named by the path's hash, so that weight
    folders (a model, the hub cache) get no lock files and every process of the node finds the same lock."""
    import tempfile

    key = hashlib.sha256(str(Path(path).absolute()).encode()).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / "boomerang-weights-locks" / f"{key}.lock"


@contextlib.contextmanager
def node_lock(target: Path):
    """An exclusive lock on ``target`` between processes of this machine (filelock, else fcntl)."""
    path = lock_file(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from filelock import FileLock
    except ImportError:
        import fcntl

        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    with FileLock(str(path), thread_local=False, is_singleton=False):
        yield


def install(
    folder: Path,
    rel: str,
    download: Callable[[Path], None],
    *,
    expected: str | None = None,
    label: str,
    source: str | None = None,
    replace_random: bool = False,
) -> tuple[str, bool]:
    """Put folder/rel in place with ``download(tmp_path)``, at most once per machine: returns (sha256, downloaded).

    Under the file's lock: a file already there that matches ``expected`` (or, with no expected sha256, any file
    there unless it is boomerang's random weights and ``replace_random``) is kept. Otherwise each attempt
    downloads to a temporary file beside it, fsyncs it, checks its sha256 and renames it into place; a short or
    mismatched download is retried ``ATTEMPTS`` times and never left behind.
    """
    target = folder / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    random_marker = target.with_name(target.name + ".boomerang-random")
    with node_lock(target):
        have = verified_sha(folder, rel)
        keep = have is not None and (have == expected if expected else not (replace_random and random_marker.exists()))
        if keep:
            if recorded_sha(folder, rel) is None:
                record_file(folder, rel, have, target, source)
            return have, False
        last: Exception | None = None
        for _ in range(ATTEMPTS):
            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            try:
                download(tmp)
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                sha = sha256_of(tmp)
                if expected and sha != expected:
                    raise Broken(f"sha256 {sha[:12]} does not match the recorded {expected[:12]}")
                os.replace(tmp, target)
                fsync_dir(target.parent)
                random_marker.unlink(missing_ok=True)
                record_file(folder, rel, sha, target, source)
                return sha, True
            except (Broken, OSError) as err:
                last = err
            finally:
                tmp.unlink(missing_ok=True)
        raise WeightsError(f"{label}: {one_line(last)} ({ATTEMPTS} attempts; nothing was left in {target.parent})")


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fsync_folder(folder)


def one_line(err: BaseException | None) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def progress_bar(total: int | None, label: str):
    """A tqdm bar on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False)


def http_download(url: str, dest: Path, label: str, expected_size: int | None = None) -> None:
    """GET ``url`` into ``dest``; Broken when the body is shorter than Content-Length (or ``expected_size``)."""
    request = urllib.request.Request(url, headers={"User-Agent": "boomerang-weights"})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        raise Broken(f"{url} answered HTTP {err.code}") from None
    except (urllib.error.URLError, TimeoutError) as err:
        raise Broken(f"{url} cannot be reached ({one_line(getattr(err, 'reason', err))})") from None
    with response:
        length = response.headers.get("Content-Length")
        size = int(length) if length is not None else expected_size
        got = 0
        with open(dest, "wb") as out, progress_bar(size, label) as bar:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:  # IncompleteRead: the server stopped early
                raise Broken(f"{url}: the download broke off after {got} bytes ({type(err).__name__})") from None
    for want in (size, expected_size):
        if want is not None and got != want:
            raise Broken(f"{url}: got {got} of {want} bytes")


def decompress(packed: Path, dest: Path, kind: str | None) -> None:
    if kind == "bz2":
        with bz2.open(packed, "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
    elif kind == "zip":
        import zipfile

        with zipfile.ZipFile(packed) as archive:
            name = archive.namelist()[0]
            with archive.open(name) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
    else:
        raise ValueError(kind)


def deepface_downloader(source) -> Callable[[Path], None]:
    """Download one deepface file from the mirror ($BOOMERANG_WEIGHTS_MIRROR/<name>) or deepface's URLs in order."""
    mirror = os.environ.get(MIRROR_ENV, "").rstrip("/")
    attempts = [(f"{mirror}/{source.name}", None)] if mirror else [(url, source.compress) for url in source.urls]

    def download(tmp: Path) -> None:
        errors = []
        for url, compress in attempts:
            try:
                if compress:
                    packed = tmp.with_name(tmp.name + "." + compress)
                    try:
                        http_download(url, packed, source.name)
                        decompress(packed, tmp, compress)
                    except (OSError, EOFError, ValueError) as err:
                        raise Broken(f"{url}: cannot unpack ({one_line(err)})") from None
                    finally:
                        packed.unlink(missing_ok=True)
                else:
                    http_download(url, tmp, source.name)
                return
            except Broken as err:
                errors.append(str(err))
        raise Broken("; ".join(errors))

    return download
