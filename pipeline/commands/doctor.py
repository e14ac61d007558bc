"""`boomerang doctor`: what this machine has for a job, and where weights are looked for."""

from __future__ import annotations

import os
from pathlib import Path

from anonymize import SamplerSettings
from evaluation import EvaluationSettings, is_random_weights, weight_file
from pipeline.execution.actors import plan_actors


def report(
    *,
    model: str | None,
    recognizers: str | None,
    engine: str,
    address: str | None,
    out: str | None = None,
    detectors: tuple[str | None, ...] = (),
    weights_from: str | None = None,
) -> tuple[str, bool]:
    """The doctor's lines, and whether every required part (model, recognizer weights, cluster, the --out
    store when given) is present; with `weights_from` (run's --weights-from), a weight file absent here but
    listed by that store is not missing: a job fills this node from it."""
    lines = ["boomerang doctor"]
    lines += _gpus()
    missing: list[str] = []
    ray_lines, ray_ok = _ray(address)
    lines += ray_lines
    if not ray_ok:
        missing.append("the Ray cluster")
    if out is not None:
        line, out_ok = output_check(out)
        lines.append(line)
        if not out_ok:
            missing.append("a usable --out")
    model_lines, model_ok = _model(model or SamplerSettings().model)
    lines += model_lines
    if not model_ok:
        missing.append("the diffusion model")
    else:
        lines += weights_lines(model=model or SamplerSettings().model)
    names = tuple(n.strip() for n in recognizers.split(",")) if recognizers else EvaluationSettings().recognizers
    lines.append(f"deepface engine: {engine} (DEEPFACE_BACKEND_ENGINE is set by boomerang)")
    home = os.environ.get("DEEPFACE_HOME", str(Path.home()))
    lines.append(f"deepface weights folder: {Path(home) / '.deepface' / 'weights'} (DEEPFACE_HOME={home})")
    absent = []
    random = [model_name(model)] if _model_is_random(model or SamplerSettings().model) else []
    for name in names:
        path = weight_file(name, engine)
        state = weight_state(name, engine, path)
        if path.exists() and is_random_weights(name, engine):
            random.append(name)
        lines.append(f"  {name}: {path} {state}")
        if not path.exists():
            absent.append(name)
    if absent:
        missing.append(f"recognizer weights ({', '.join(absent)})")
    detector_lines, detectors_ok = _detector_lines([d for d in detectors if d], engine)
    lines += detector_lines
    if not detectors_ok:
        missing.append("face detector weights")
    if weights_from:
        store_line, store_ok = store_check(weights_from, model or SamplerSettings().model, names, detectors, engine)
        lines.append(store_line)
        # What the store lists, a job copies here first: only the store itself can be missing.
        missing = [m for m in missing if m in ("the Ray cluster", "a usable --out")]
        if not store_ok:
            missing.append("a usable --weights-from store")
    ok = not missing
    if ok and random:  # present, but what a job measures with them means nothing
        lines.append(f"ready: every required part is present, but {', '.join(random)}: {RANDOM}")
    else:
        lines.append("ready: every required part is present" if ok else f"NOT ready: missing {'; '.join(missing)}")
    return "\n".join(lines), ok


def store_check(url: str, model: str | None, names, detectors, engine: str) -> tuple[str, bool]:
    """Whether the --weights-from store lists every file a job with these weights loads (a job copies them
    here, verified, before any model loads)."""
    from pipeline.weights.needs import WeightsError, needs
    from pipeline.weights.store import Store, check_store

    try:
        check_store(
            Store(url),
            needs(recognizers=names, detectors=[d for d in detectors if d], engine=engine, model=model, urls=False),
        )
    except (ValueError, WeightsError) as err:
        return f"weights store: {err}", False
    return f"weights store {url}: lists every file above; a job copies what is missing here and verifies it", True


def weight_state(name: str, engine: str, path: Path) -> str:
    """present and verified / random (demo) / present, unrecorded / MISSING with the command that fetches it."""
    from pipeline.weights.files import read_manifest, verified_sha
    from pipeline.weights.needs import deepface_folder, needs

    if not path.exists():
        command = needs(recognizers=[name], engine=engine, urls=False).fetch_command()
        return f"MISSING: fetch it with `{command}` (offline: copy it)"
    if is_random_weights(name, engine):
        return f"present ({RANDOM})"
    recorded = read_manifest(deepface_folder())["files"].get(path.name, {}).get("sha256")
    if recorded is None:
        return "present (no sha256 recorded: not fetched by `boomerang weights fetch`)"
    if verified_sha(deepface_folder(), path.name) == recorded:
        return "present, verified against weights.json"
    return "present but CHANGED since it was fetched (sha256 differs from weights.json): fetch it again"


def _detector_lines(detectors: list[str], engine: str) -> tuple[list[str], bool]:
    from pipeline.weights.needs import WeightsError, needs
    from pipeline.weights.store import file_states

    lines, ok = [], True
    for detector in dict.fromkeys(detectors):
        try:
            want = needs(detectors=[detector], engine=engine)
        except (ValueError, WeightsError) as err:
            lines.append(f"  detector {detector}: {err}")
            continue
        if not want.deepface:
            lines.append(f"  detector {detector}: needs no file in the weights folder")
        for name, path, state in file_states(want):
            if state == "MISSING":
                ok = False
                state = f"MISSING: fetch it with `{want.fetch_command()}`"
            lines.append(f"  {name}: {path} {state}")
    return lines, ok


def weights_lines(model: str) -> list[str]:
    """The model's state by weights.json (verified, random demo weights, no record)."""
    from pipeline.weights.needs import needs
    from pipeline.weights.store import file_states

    return [f"  weights: {state}" for _, _, state in file_states(needs(model=model))]


RANDOM = "random weights: numbers not meaningful"


def model_name(model: str | None) -> str:
    return "the diffusion model" if model is None else f"model {model}"


def _model_is_random(model: str) -> bool:
    """A local folder that `boomerang demo` (anonymize.tiny_models) made: random weights."""
    from anonymize import made_by_boomerang

    path = Path(model).expanduser()
    return path.is_dir() and bool(made_by_boomerang(path))


def _gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return ["GPUs: none visible to torch (the sampler runs on CPU, slowly)"]
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [f"GPUs: {len(names)}: {', '.join(names)}"]


def _ray(address: str | None) -> tuple[list[str], bool]:
    """Join the cluster given with the job's own code (pipeline.execution.cluster), so a failure reads the same."""
    import ray

    from pipeline.execution.cluster import ClusterUnavailable, check

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        import torch

        cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
        return [
            f"Ray {ray.__version__}: no cluster given; jobs start an embedded local Ray with {cpus} CPUs",
            _plan_line(cpus, gpus),
        ], True
    try:
        info = check(address)
    except ClusterUnavailable as err:
        return [f"Ray {ray.__version__}: {err}"], False
    return [
        f"Ray {ray.__version__} cluster {address}: joined: {info.nodes} nodes, {info.cpus:g} CPUs, {info.gpus:g} GPUs",
        _plan_line(info.cpus, info.gpus),
    ], True


def _plan_line(cpus: float, gpus: float) -> str:
    return f"plan with default flags: {plan_actors(cpus, gpus).describe()}"


def _model(model: str) -> tuple[list[str], bool]:
    path = Path(model).expanduser()
    if path.exists():
        ok = (path / "model_index.json").is_file()
        return [f"model {model}: local folder {path} {'present' if ok else 'MISSING model_index.json'}"], ok
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        from huggingface_hub import snapshot_download

        where = snapshot_download(model, local_files_only=True)
        return [f"model {model}: in the Hugging Face cache at {where}"], True
    except Exception:
        return [
            f"model {model}: MISSING from the Hugging Face cache {HF_HUB_CACHE}; with no network, "
            "download it elsewhere and set HF_HOME, or pass --model /path/to/folder"
        ], False


def output_check(out: str) -> tuple[str, bool]:
    """Where a job's run folder would go, whether its store answers, and which lock it would take."""
    from pipeline.folder.layout import OutputError, RunLayout
    from pipeline.folder.lock import describe

    try:
        layout = RunLayout.at(out)
        layout.check_store()
    except OutputError as err:
        return f"output: {err}", False
    kind = "local folder" if layout.local else "object store, reachable"
    return f"output: {layout.root} ({kind}; lock: {describe(layout.lock_file)})", True


def cmd_doctor(args) -> int:
    if args.deepface_home:
        os.environ["DEEPFACE_HOME"] = args.deepface_home
    text, ok = report(
        model=args.model,
        recognizers=args.recognizers,
        engine=args.engine,
        address=args.address,
        out=args.out,
        detectors=(args.detector, args.region_detector),
        weights_from=args.weights_from,
    )
    print(text)
    return 0 if ok else 1
