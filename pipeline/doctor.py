"""`boomerang doctor`: what this machine has for a job, and where weights are looked for."""

from __future__ import annotations

import os
from pathlib import Path

from anonymize import SamplerSettings
from evaluation import EvaluationSettings, weight_file


def report(*, model: str | None, recognizers: str | None, engine: str, address: str | None) -> str:
    lines = ["boomerang doctor"]
    lines += _gpus()
    lines += _ray(address)
    lines += _model(model or SamplerSettings().model)
    names = tuple(n.strip() for n in recognizers.split(",")) if recognizers else EvaluationSettings().recognizers
    lines.append(f"deepface engine: {engine} (DEEPFACE_BACKEND_ENGINE is set by boomerang)")
    home = os.environ.get("DEEPFACE_HOME", str(Path.home()))
    lines.append(f"deepface weights folder: {Path(home) / '.deepface' / 'weights'} (DEEPFACE_HOME={home})")
    for name in names:
        path = weight_file(name, engine)
        state = "present" if path.exists() else "MISSING: copy the file there (no download without network)"
        lines.append(f"  {name}: {path} {state}")
    return "\n".join(lines)


def _gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return ["GPUs: none visible to torch (the sampler runs on CPU, slowly)"]
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [f"GPUs: {len(names)}: {', '.join(names)}"]


def _ray(address: str | None) -> list[str]:
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return [f"Ray {ray.__version__}: no cluster given; jobs start an embedded local Ray with {os.cpu_count()} CPUs"]
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        resources = ray.cluster_resources()
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        ray.shutdown()
        return [
            f"Ray cluster {address}: {alive} nodes, {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
        ]
    except Exception as err:  # doctor reports; it does not fail
        return [f"Ray cluster {address}: cannot connect ({' '.join(str(err).split())[:200]})"]


def _model(model: str) -> list[str]:
    path = Path(model).expanduser()
    if path.exists():
        ok = (path / "model_index.json").is_file()
        return [f"model {model}: local folder {path} {'present' if ok else 'MISSING model_index.json'}"]
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        from huggingface_hub import snapshot_download

        where = snapshot_download(model, local_files_only=True)
        return [f"model {model}: in the Hugging Face cache at {where}"]
    except Exception:
        return [
            f"model {model}: MISSING from the Hugging Face cache {HF_HUB_CACHE}; with no network, "
            "download it elsewhere and set HF_HOME, or pass --model /path/to/folder"
        ]
