"""`boomerang weights fetch|push` and `--weights-from`: get every weight file a job needs, verified, onto a node.

What a job needs (``needs``): deepface's files for its recognizers and face detectors, in
``$DEEPFACE_HOME/.deepface/weights``, and its diffusers model (a local folder, or a hub id in the Hugging Face
cache). Each file is written atomically (a temporary file in the same folder, fsync, rename) under a per-file
lock, so concurrent fetches on one machine download it once and a killed download leaves nothing behind; its
sha256 is recorded in a ``weights.json`` beside it.

Sources: deepface's own download URLs (or ``$BOOMERANG_WEIGHTS_MIRROR/<file name>`` when that variable is set),
the Hugging Face hub (only the components Boomerang loads), or a store laid out as ``weights push`` writes it:

    SOURCE/weights.json                   {"files": {relative path: {"sha256", "size"}}, "models": {key: {...}}}
    SOURCE/deepface/<file>                each deepface file
    SOURCE/models/<key>/<relative path>   a model folder (key: the hub id with "/" as "--", or a folder's name)

SOURCE is a folder, an http(s) base URL, or any fsspec URL (s3://, gs://, ...).
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import http.client
import json
import os
import shlex
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from anonymize.loading import UNUSED_COMPONENTS  # never fetched, pushed or loaded
from evaluation import MissingWeights

MANIFEST = "weights.json"
MIRROR_ENV = "BOOMERANG_WEIGHTS_MIRROR"
ATTEMPTS = 3
_CHUNK = 1 << 20


class WeightsError(MissingWeights):
    """A weight file cannot be had or does not match its recorded sha256; ``str()`` is one line naming the file."""


class _Broken(Exception):
    """One download attempt went wrong (short, bad status, wrong sha256): try again."""


@dataclass(frozen=True)
class Needs:
    """What a job with given settings loads: deepface files and a diffusers model."""

    deepface: tuple = ()  # evaluation.sources.WeightSource
    model: str | None = None
    revision: str | None = None
    allow_pickle: bool = False
    variant: str | None = None
    # The flags that name these needs, for the `boomerang weights fetch` line in refusals.
    flags: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def fetch_command(self, source: str | None = None) -> str:
        words = ["boomerang", "weights", "fetch"]
        for flag, value in self.flags:
            words += [flag, value]
        if source:
            words += ["--from", source]
        return " ".join(shlex.quote(w) for w in words)


def needs(
    *,
    recognizers: Iterable[str] = (),
    detectors: Iterable[str | None] = (),
    engine: str = "pytorch",
    model: str | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    variant: str | None = None,
    urls: bool = True,
    region_detector: str | None = None,
) -> Needs:
    """The files a job with these settings loads (ValueError for a recognizer or detector deepface cannot fetch).
    ``detectors``: the evaluation's (one, or none); ``region_detector``: face-region mode's."""
    from evaluation.sources import job_sources

    recognizers, detectors = tuple(recognizers), [d for d in detectors if d]
    flags = []
    if recognizers:
        flags.append(("--recognizers", ",".join(recognizers)))
    for name in detectors:
        flags.append(("--detector", name))
    if region_detector:
        flags.append(("--region-detector", region_detector))
        detectors.append(region_detector)
    if engine != "pytorch" and recognizers:
        flags.append(("--engine", engine))
    if model:
        flags.append(("--model", model))
    if os.environ.get("DEEPFACE_HOME"):
        flags.append(("--deepface-home", os.environ["DEEPFACE_HOME"]))
    return Needs(
        deepface=tuple(job_sources(recognizers, detectors, engine, urls=urls)),
        model=model,
        revision=revision,
        allow_pickle=allow_pickle,
        variant=variant,
        flags=tuple(flags),
    )


def job_needs(settings, mode: str) -> Needs:
    """What a job of ``mode`` ("run", "anonymize", "evaluate", ...) with JobSettings ``settings`` loads."""
    anonymizes, evaluates = mode != "evaluate", mode not in ("anonymize",)
    try:
        return needs(
            recognizers=settings.evaluation.recognizers if evaluates else (),
            detectors=[settings.evaluation.detector] if evaluates else [],
            region_detector=settings.region.detector if settings.region.faces else None,
            engine=settings.evaluation.engine,
            model=settings.sampler.model if anonymizes else None,
            revision=settings.sampler.revision,
            allow_pickle=settings.sampler.allow_pickle,
            urls=False,
        )
    except ValueError as err:
        raise WeightsError(str(err)) from None


# ---------------------------------------------------------------------------------------------------- where


def deepface_folder() -> Path:
    from evaluation.weights import deepface_home

    return deepface_home() / ".deepface" / "weights"


def _is_local_model(model: str) -> bool:
    return os.path.isabs(model) or model.startswith(("~", ".", "file:")) or Path(model).expanduser().exists()


def model_key(model: str) -> str:
    """The model's folder name in a pushed store: a hub id with "/" as "--", a local folder by its name."""
    if _is_local_model(model):
        return Path(model.removeprefix("file://")).expanduser().name
    return model.replace("/", "--")


def _hub_repo_folder(model: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + model.replace("/", "--"))


def local_model_folder(model: str, revision: str | None = None) -> Path | None:
    """Where the model's files are on this machine, or None when a hub id is not in the cache."""
    if _is_local_model(model):
        return Path(model.removeprefix("file://")).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:
        return None


def model_files(folder: Path, allow_pickle: bool = False) -> list[str]:
    """The files of a diffusers folder that Boomerang loads (relative paths): model_index.json, the random-weights
    marker, and every file of each used component (never the safety checker or feature extractor)."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    found = ["model_index.json"]
    from anonymize.tiny_models import RANDOM_WEIGHTS_MARKER

    if (folder / RANDOM_WEIGHTS_MARKER).is_file():
        found.append(RANDOM_WEIGHTS_MARKER)
    for name, spec in sorted(index.items()):
        if name.startswith("_") or name in UNUSED_COMPONENTS or not isinstance(spec, list) or spec[0] is None:
            continue
        for path in sorted((folder / name).rglob("*")):
            if not path.is_file() or path.name == MANIFEST:
                continue
            if path.suffix in (".bin", ".ckpt", ".pt", ".pth", ".pkl") and not allow_pickle:
                continue
            found.append(path.relative_to(folder).as_posix())
    return found


def hub_patterns(index: dict, variant: str | None = None, allow_pickle: bool = False) -> tuple[list, list]:
    """``allow_patterns`` and ``ignore_patterns`` for ``snapshot_download`` of the components Boomerang loads."""
    allow = ["model_index.json"]
    for name, spec in index.items():
        if name.startswith("_") or name in UNUSED_COMPONENTS or not isinstance(spec, list) or spec[0] is None:
            continue
        allow += [f"{name}/*.json", f"{name}/*.txt", f"{name}/*.model"]
        weights = ["safetensors"] + (["bin"] if allow_pickle else [])
        allow += [f"{name}/*.{variant}.{ext}" if variant else f"{name}/*.{ext}" for ext in weights]
    ignore = [] if variant else ["*.fp16.*", "*.non_ema.*", "*.ema.*"]
    return allow, ignore


# -------------------------------------------------------------------------------------------------- records


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"version": 1, "files": {}}
    data.setdefault("files", {})
    return data


def _record(folder: Path, rel: str, sha: str, path: Path, source: str | None = None) -> None:
    """Record ``rel``'s sha256 (with size and mtime, so a later check need not hash it again) in folder/weights.json."""
    with _lock(folder / MANIFEST):
        data = read_manifest(folder)
        stat = path.stat()
        entry = {"sha256": sha, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if source:
            entry["source"] = source
        data["files"][rel] = entry
        _write_atomic(folder / MANIFEST, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def lock_file(path: Path) -> Path:
    """The node-level lock of ``path``: in this machine's temporary folder, named by the path's hash, so that weight
    folders (a model, the hub cache) get no lock files and every process of the node finds the same lock."""
    import tempfile

    key = hashlib.sha256(str(Path(path).absolute()).encode()).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / "boomerang-weights-locks" / f"{key}.lock"


@contextlib.contextmanager
def _lock(target: Path):
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


# ---------------------------------------------------------------------------------------------- installing


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
    with _lock(target):
        have = verified_sha(folder, rel)
        keep = have is not None and (have == expected if expected else not (replace_random and random_marker.exists()))
        if keep:
            if recorded_sha(folder, rel) is None:
                _record(folder, rel, have, target, source)
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
                    raise _Broken(f"sha256 {sha[:12]} does not match the recorded {expected[:12]}")
                os.replace(tmp, target)
                _fsync_dir(target.parent)
                random_marker.unlink(missing_ok=True)
                _record(folder, rel, sha, target, source)
                return sha, True
            except (_Broken, OSError) as err:
                last = err
            finally:
                tmp.unlink(missing_ok=True)
        raise WeightsError(f"{label}: {_one_line(last)} ({ATTEMPTS} attempts; nothing was left in {target.parent})")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _one_line(err: BaseException | None) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _progress(total: int | None, label: str):
    """A tqdm bar on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False)


def http_download(url: str, dest: Path, label: str, expected_size: int | None = None) -> None:
    """GET ``url`` into ``dest``; _Broken when the body is shorter than Content-Length (or ``expected_size``)."""
    request = urllib.request.Request(url, headers={"User-Agent": "boomerang-weights"})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        raise _Broken(f"{url} answered HTTP {err.code}") from None
    except (urllib.error.URLError, TimeoutError) as err:
        raise _Broken(f"{url} cannot be reached ({_one_line(getattr(err, 'reason', err))})") from None
    with response:
        length = response.headers.get("Content-Length")
        size = int(length) if length is not None else expected_size
        got = 0
        with open(dest, "wb") as out, _progress(size, label) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:  # IncompleteRead: the server stopped early
                raise _Broken(f"{url}: the download broke off after {got} bytes ({type(err).__name__})") from None
    for want in (size, expected_size):
        if want is not None and got != want:
            raise _Broken(f"{url}: got {got} of {want} bytes")


def _decompress(packed: Path, dest: Path, kind: str | None) -> None:
    if kind == "bz2":
        with bz2.open(packed, "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
    elif kind == "zip":
        import zipfile

        with zipfile.ZipFile(packed) as archive:
            name = archive.namelist()[0]
            with archive.open(name) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
    else:
        raise ValueError(kind)


def _deepface_downloader(source) -> Callable[[Path], None]:
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
                        _decompress(packed, tmp, compress)
                    except (OSError, EOFError, ValueError) as err:
                        raise _Broken(f"{url}: cannot unpack ({_one_line(err)})") from None
                    finally:
                        packed.unlink(missing_ok=True)
                else:
                    http_download(url, tmp, source.name)
                return
            except _Broken as err:
                errors.append(str(err))
        raise _Broken("; ".join(errors))

    return download


# ------------------------------------------------------------------------------------------------- sources


class Store:
    """A store laid out as `weights push` writes it: a local folder, an http(s) base URL or an fsspec URL."""

    def __init__(self, url: str) -> None:
        self.url = str(url).rstrip("/")
        self.http = self.url.startswith(("http://", "https://"))
        self._manifest: dict | None = None

    def __str__(self) -> str:
        return self.url

    def _fs(self):
        from fsspec.core import url_to_fs

        return url_to_fs(self.url)

    def manifest(self) -> dict:
        """SOURCE/weights.json (WeightsError when it cannot be read)."""
        if self._manifest is None:
            try:
                if self.http:
                    with urllib.request.urlopen(f"{self.url}/{MANIFEST}", timeout=60) as response:
                        text = response.read().decode("utf-8")
                else:
                    fs, root = self._fs()
                    text = fs.cat_file(f"{root}/{MANIFEST}").decode("utf-8")
                self._manifest = json.loads(text)
            except Exception as err:
                raise WeightsError(
                    f"--weights-from {self.url}: cannot read its {MANIFEST} ({_one_line(err)}); "
                    "fill it with `boomerang weights push`"
                ) from None
            self._manifest.setdefault("files", {})
            self._manifest.setdefault("models", {})
        return self._manifest

    def downloader(self, rel: str) -> Callable[[Path], None]:
        size = self.manifest()["files"].get(rel, {}).get("size")

        def download(tmp: Path) -> None:
            if self.http:
                http_download(f"{self.url}/{rel}", tmp, rel, expected_size=size)
                return
            fs, root = self._fs()
            got = 0
            try:
                with fs.open(f"{root}/{rel}", "rb") as src, open(tmp, "wb") as out, _progress(size, rel) as bar:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        got += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            except FileNotFoundError:
                raise _Broken(f"{self.url}/{rel} is missing") from None
            if size is not None and got != size:
                raise _Broken(f"{self.url}/{rel}: got {got} of {size} bytes")

        return download


def _model_entry(store: Store, model: str) -> tuple[str, dict]:
    key = model_key(model)
    entry = store.manifest()["models"].get(key)
    if entry is None:
        raise WeightsError(f"--weights-from {store}: it holds no model {key!r} (push it with `boomerang weights push`)")
    return key, entry


def check_store(store: Store, want: Needs) -> None:
    """Raise WeightsError (one line, naming the first file) unless the store's weights.json lists every needed file."""
    files = store.manifest()["files"]
    for source in want.deepface:
        if f"deepface/{source.name}" not in files:
            raise WeightsError(f"--weights-from {store}: it lacks deepface/{source.name} ({source.owner})")
    if want.model:
        key, entry = _model_entry(store, want.model)
        for rel in entry.get("files", []):
            if f"models/{key}/{rel}" not in files:
                raise WeightsError(f"--weights-from {store}: it lacks models/{key}/{rel}")


def model_destination(model: str, entry: dict) -> Path:
    """Where a model from a store goes on this machine: its local folder, or its hub snapshot in the HF cache."""
    if _is_local_model(model):
        return Path(model.removeprefix("file://")).expanduser()
    commit = entry.get("commit")
    if not commit:
        raise WeightsError(f"model {model}: the store names no hub commit for it; push it again")
    return _hub_repo_folder(model) / "snapshots" / commit


def stage(store: Store, want: Needs) -> list[str]:
    """Fill this machine's weights from ``store``, each file verified against the store's weights.json; returns
    the files downloaded (those already in place and matching are kept). WeightsError names a mismatched file."""
    check_store(store, want)
    files = store.manifest()["files"]
    got = []
    folder = deepface_folder()
    for source in want.deepface:
        rel = f"deepface/{source.name}"
        label = f"{store}/{rel}"
        _, new = install(
            folder, source.name, store.downloader(rel), expected=files[rel]["sha256"], label=label, source=store.url
        )
        if files[rel].get("random"):  # boomerang's random demo weights stay marked as such
            from evaluation.weights import _marker  # noqa: PLC2701

            _marker(folder / source.name).write_text("Seeded random weights (copied by boomerang weights).\n")
        if new:
            got.append(rel)
    if want.model:
        key, entry = _model_entry(store, want.model)
        dest = model_destination(want.model, entry)
        for rel in entry.get("files", []):
            path = f"models/{key}/{rel}"
            expected = files[path]["sha256"]
            label = f"{store}/{path}"
            _, new = install(dest, rel, store.downloader(path), expected=expected, label=label, source=store.url)
            if new:
                got.append(path)
        if not _is_local_model(want.model):
            refs = _hub_repo_folder(want.model) / "refs"
            refs.mkdir(parents=True, exist_ok=True)
            _write_atomic(refs / (want.revision or entry.get("revision") or "main"), entry["commit"].encode())
    return got


# ---------------------------------------------------------------------------------------------- the commands


def fetch(want: Needs, source: str | None = None) -> list[str]:
    """`boomerang weights fetch`: every needed file in place and recorded; returns one line per file."""
    if source:
        store = Store(source)
        stage(store, want)
        return _status_lines(want)
    folder = deepface_folder()
    for item in want.deepface:
        where = os.environ.get(MIRROR_ENV) or item.urls[0]
        install(
            folder,
            item.name,
            _deepface_downloader(item),
            label=f"{item.name} ({item.owner}) from {where}",
            source=where,
            replace_random=True,
        )
    if want.model and not _is_local_model(want.model):
        _fetch_hub_model(want)
    elif want.model:
        local = Path(want.model).expanduser()
        if not (local / "model_index.json").is_file():
            raise WeightsError(f"model {want.model}: no diffusers folder there (no model_index.json)")
        for rel in model_files(local, want.allow_pickle):
            sha = verified_sha(local, rel)
            if recorded_sha(local, rel) is None and sha is not None:
                _record(local, rel, sha, local / rel)
    return _status_lines(want)


def _fetch_hub_model(want: Needs) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        index_file = hf_hub_download(want.model, "model_index.json", revision=want.revision)
        index = json.loads(Path(index_file).read_text(encoding="utf-8"))
        allow, ignore = hub_patterns(index, want.variant, want.allow_pickle)
        folder = Path(
            snapshot_download(want.model, revision=want.revision, allow_patterns=allow, ignore_patterns=ignore)
        )
    except Exception as err:
        raise WeightsError(
            f"model {want.model}: fetching it from the Hugging Face hub failed ({_one_line(err)})"
        ) from None
    for rel in model_files(folder, want.allow_pickle):
        _record(folder, rel, sha256_of(folder / rel), folder / rel, source=f"hf://{want.model}")
    return folder


def push(want: Needs, dest: str) -> list[str]:
    """`boomerang weights push DEST`: copy every needed file and weights.json to DEST; returns what was copied."""
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(dest.rstrip("/"))
    try:
        manifest = json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
    except FileNotFoundError:
        manifest = {"version": 1}
    manifest.setdefault("files", {})
    manifest.setdefault("models", {})
    plan: list[tuple[Path, str, str]] = []  # (folder, rel there, rel in the store)
    folder = deepface_folder()
    for item in want.deepface:
        if not (folder / item.name).is_file():
            raise WeightsError(f"{item.name} ({item.owner}) is not in {folder}: {want.fetch_command()}")
        plan.append((folder, item.name, f"deepface/{item.name}"))
    if want.model:
        local = local_model_folder(want.model, want.revision)
        if local is None or not (local / "model_index.json").is_file():
            raise WeightsError(f"model {want.model} is not on this machine: {want.fetch_command()}")
        key = model_key(want.model)
        rels = model_files(local, want.allow_pickle)
        plan += [(local, rel, f"models/{key}/{rel}") for rel in rels]
        commit = None if _is_local_model(want.model) else local.name
        name = key if _is_local_model(want.model) else want.model  # a local folder by its name, never its path
        manifest["models"][key] = {"model": name, "commit": commit, "files": rels}
        if want.revision:
            manifest["models"][key]["revision"] = want.revision
    copied = []
    for src_folder, rel, store_rel in plan:
        path = src_folder / rel
        sha = verified_sha(src_folder, rel)
        size = path.stat().st_size
        old = manifest["files"].get(store_rel)
        if old and old.get("sha256") == sha and fs.exists(f"{root}/{store_rel}"):
            continue
        fs.makedirs(f"{root}/{store_rel}".rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path), f"{root}/{store_rel}")
        manifest["files"][store_rel] = {"sha256": sha, "size": size}
        if store_rel.startswith("deepface/") and path.with_name(path.name + ".boomerang-random").exists():
            manifest["files"][store_rel]["random"] = True
        copied.append(store_rel)
    # weights.json last: a store is complete once its manifest names a file.
    fs.pipe_file(f"{root}/{MANIFEST}", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return copied


def file_states(want: Needs) -> list[tuple[str, str, str]]:
    """(file, path, state) for each needed file; state is "verified", "present", "random (demo weights)" or
    "MISSING"."""
    from evaluation.weights import _marker  # noqa: PLC2701 - the random-weights marker's name lives there

    states = []
    folder = deepface_folder()
    for item in want.deepface:
        path = folder / item.name
        if not path.is_file():
            state = "MISSING"
        elif _marker(path).exists():
            state = "random (demo weights: distances mean nothing)"
        else:
            recorded = read_manifest(folder)["files"].get(item.name, {}).get("sha256")
            state = (
                ("verified" if verified_sha(folder, item.name) == recorded else "CHANGED since fetched")
                if recorded
                else "present (not fetched by boomerang: no sha256 recorded)"
            )
        states.append((f"{item.name} ({item.owner})", str(path), state))
    if want.model:
        from anonymize.tiny_models import made_by_boomerang

        local = local_model_folder(want.model, want.revision)
        if local is None or not (local / "model_index.json").is_file():
            states.append((f"model {want.model}", str(local or _hub_repo_folder(want.model)), "MISSING"))
        elif made_by_boomerang(local):
            states.append((f"model {want.model}", str(local), "random (demo weights: images mean nothing)"))
        else:
            recorded = read_manifest(local)["files"]
            rels = model_files(local, want.allow_pickle)
            if recorded and all(verified_sha(local, r) == recorded.get(r, {}).get("sha256") for r in rels):
                state = "verified"
            elif recorded:
                state = "CHANGED since fetched"
            else:
                state = "present (no sha256 recorded)"
            states.append((f"model {want.model}", str(local), state))
    return states


def _status_lines(want: Needs) -> list[str]:
    return [f"{name}: {state} at {path}" for name, path, state in file_states(want)]


def check_local(want: Needs) -> None:
    """A job without --weights-from: refuse in one line, naming the fetch command, when a deepface file is absent."""
    folder = deepface_folder()
    for item in want.deepface:
        if not (folder / item.name).is_file():
            raise WeightsError(
                f"{item.name} ({item.owner}) not found in {folder}; fetch it with: {want.fetch_command()} "
                f"(offline: --weights-from SOURCE, or copy the file there)"
            )


def prepare_job_weights(settings, mode: str) -> Needs:
    """The driver's check before any actor starts. With --weights-from: the store lists every needed file, and
    this machine's copies are filled from it and verified (a mismatch names the file). Without: every deepface
    file is where deepface looks (no download here: deepface would try the network from every actor)."""
    want = job_needs(settings, mode)
    if settings.weights_from:
        stage(Store(settings.weights_from), want)
        return want
    if mode != "anonymize":
        from evaluation import check_weights

        try:
            check_weights(settings.evaluation.recognizers, settings.evaluation.engine)
        except MissingWeights as err:
            raise WeightsError(f"{err}; or fetch it: {want.fetch_command()}") from None
    check_local(want)
    return want


def stage_for_actor(weights_from: str | None, **kwargs) -> None:
    """An actor's start: fill this node's copies from ``weights_from`` (no-op without it). The first actor of a
    node downloads; the others wait on the per-file locks and find the files verified."""
    if not weights_from:
        return
    want = needs(**kwargs, urls=False)
    if not staged_here(Store(weights_from), want):
        stage(Store(weights_from), want)


def staged_here(store: Store, want: Needs) -> bool:
    """True when every needed file on this node was copied from ``store`` and is unchanged since (its recorded
    size and mtime): then an actor need not read the store again (the driver's node, a node's later actors)."""
    folder = deepface_folder()
    for item in want.deepface:
        entry = read_manifest(folder)["files"].get(item.name, {})
        if entry.get("source") != store.url or recorded_sha(folder, item.name) is None:
            return False
    if want.model:
        if not _is_local_model(want.model):
            return False  # a hub snapshot's folder is named by the store's commit: ask the store
        local = Path(want.model.removeprefix("file://")).expanduser()
        entries = read_manifest(local)["files"]
        mine = [rel for rel, e in entries.items() if e.get("source") == store.url]
        if "model_index.json" not in mine or any(recorded_sha(local, rel) is None for rel in mine):
            return False
    return True


def command(args) -> int:
    """`boomerang weights fetch|push` from parsed flags (defaults: the job's own recognizers and model)."""
    from anonymize import SamplerSettings
    from evaluation import EvaluationSettings

    if args.deepface_home:
        os.environ["DEEPFACE_HOME"] = os.path.abspath(os.path.expanduser(args.deepface_home))
    names = args.recognizers.split(",") if args.recognizers else EvaluationSettings().recognizers
    model = None if args.no_model else args.model or SamplerSettings().model
    if model and _is_local_model(model):
        model = os.path.abspath(os.path.expanduser(model.removeprefix("file://")))
    try:
        want = needs(
            recognizers=[n.strip() for n in names if n.strip()],
            detectors=[args.detector],
            region_detector=args.region_detector,
            engine=args.engine,
            model=model,
            revision=args.revision,
            allow_pickle=args.allow_pickle,
            variant=getattr(args, "variant", None),
        )
    except ValueError as err:
        raise WeightsError(_one_line(err)) from None
    if args.weights_command == "push":
        copied = push(want, args.dest)
        print(f"pushed {len(copied)} file(s) to {args.dest} (weights.json lists every file a job needs)")
        return 0
    for line in fetch(want, args.source):
        print(line)
    return 0
