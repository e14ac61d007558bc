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

SOURCE is a folder, an http(s) base URL, or any fsspec URL (s3://, gs://, ...)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from evaluation import MissingWeights
from evaluation.files import write_atomic
from pipeline.weights.files import (
    deepface_downloader,
    http_download,
    install,
    one_line,
    progress_bar,
    read_manifest,
    record_file,
    recorded_sha,
    sha256_of,
    verified_sha,
)
from pipeline.weights.needs import (
    CHUNK,
    MANIFEST,
    MIRROR_ENV,
    Broken,
    Needs,
    WeightsError,
    deepface_folder,
    hub_patterns,
    hub_repo_folder,
    is_local_model,
    job_needs,
    local_model_folder,
    model_files,
    model_key,
    needs,
)


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
                    f"--weights-from {self.url}: cannot read its {MANIFEST} ({one_line(err)}); "
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
                with fs.open(f"{root}/{rel}", "rb") as src, open(tmp, "wb") as out, progress_bar(size, rel) as bar:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        got += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
            except FileNotFoundError:
                raise Broken(f"{self.url}/{rel} is missing") from None
            if size is not None and got != size:
                raise Broken(f"{self.url}/{rel}: got {got} of {size} bytes")

        return download


def model_entry(store: Store, model: str) -> tuple[str, dict]:
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
        key, entry = model_entry(store, want.model)
        for rel in entry.get("files", []):
            if f"models/{key}/{rel}" not in files:
                raise WeightsError(f"--weights-from {store}: it lacks models/{key}/{rel}")


def model_destination(model: str, entry: dict) -> Path:
    """Where a model from a store goes on this machine: its local folder, or its hub snapshot in the HF cache."""
    if is_local_model(model):
        return Path(model.removeprefix("file://")).expanduser()
    commit = entry.get("commit")
    if not commit:
        raise WeightsError(f"model {model}: the store names no hub commit for it; push it again")
    return hub_repo_folder(model) / "snapshots" / commit


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
        key, entry = model_entry(store, want.model)
        dest = model_destination(want.model, entry)
        for rel in entry.get("files", []):
            path = f"models/{key}/{rel}"
            expected = files[path]["sha256"]
            label = f"{store}/{path}"
            _, new = install(dest, rel, store.downloader(path), expected=expected, label=label, source=store.url)
            if new:
                got.append(path)
        if not is_local_model(want.model):
            refs = hub_repo_folder(want.model) / "refs"
            refs.mkdir(parents=True, exist_ok=True)
            write_atomic(refs / (want.revision or entry.get("revision") or "main"), entry["commit"].encode())
    return got


def fetch(want: Needs, source: str | None = None) -> list[str]:
    """`boomerang weights fetch`: every needed file in place and recorded; returns one line per file."""
    if source:
        store = Store(source)
        stage(store, want)
        return status_lines(want)
    folder = deepface_folder()
    for item in want.deepface:
        where = os.environ.get(MIRROR_ENV) or item.urls[0]
        install(
            folder,
            item.name,
            deepface_downloader(item),
            label=f"{item.name} ({item.owner}) from {where}",
            source=where,
            replace_random=True,
        )
    if want.model and not is_local_model(want.model):
        fetch_hub_model(want)
    elif want.model:
        local = Path(want.model).expanduser()
        if not (local / "model_index.json").is_file():
            raise WeightsError(f"model {want.model}: no diffusers folder there (no model_index.json)")
        for rel in model_files(local, want.allow_pickle):
            sha = verified_sha(local, rel)
            if recorded_sha(local, rel) is None and sha is not None:
                record_file(local, rel, sha, local / rel)
    return status_lines(want)


def fetch_hub_model(want: Needs) -> Path:
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
            f"model {want.model}: fetching it from the Hugging Face hub failed ({one_line(err)})"
        ) from None
    for rel in model_files(folder, want.allow_pickle):
        record_file(folder, rel, sha256_of(folder / rel), folder / rel, source=f"hf://{want.model}")
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
        commit = None if is_local_model(want.model) else local.name
        name = key if is_local_model(want.model) else want.model  # a local folder by its name, never its path
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
            states.append((f"model {want.model}", str(local or hub_repo_folder(want.model)), "MISSING"))
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


def status_lines(want: Needs) -> list[str]:
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
        if not is_local_model(want.model):
            return False  # a hub snapshot's folder is named by the store's commit: ask the store
        local = Path(want.model.removeprefix("file://")).expanduser()
        entries = read_manifest(local)["files"]
        mine = [rel for rel, e in entries.items() if e.get("source") == store.url]
        if "model_index.json" not in mine or any(recorded_sha(local, rel) is None for rel in mine):
            return False
    return True
