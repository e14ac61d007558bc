"""What makes a report a document: when, by which tool, of which input (a count and a keyed digest, never a
name), with which settings (only those that made these outputs) and weights (their hashes)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from pipeline.folder.provenance import now

# The label that sets the input digest apart from every other use of the run's secret.
INPUT_DIGEST_LABEL = b"boomerang/input-digest/v1"
TOOL = "boomerang-anonymize"

# The settings an evaluate-only run used: it ran no sampler, no ladder, no region; the evaluated tool is its label.
EVALUATE_SETTINGS = (
    "label",
    "evaluation",
    "identity_from",
    "identity_column",
    "image_column",
    "id_column",
    "max_pixels",
    "eval_batch_size",
    "eval_workers",
    "eval_gpus_per_worker",
    "retry_errors",
    "strict",
    "shard_size",
)
_GATE_ONLY = ("ladder", "gate_thresholds", "gate_max_linkage", "report_withheld", "accept_scene_linkage")
_OUTPUT_ONLY = ("report_originals", "report_withheld")


def run_secret(job) -> bytes:
    """The run's secret: the job's, or (a report rebuilt by `boomerang report`, which holds none) private/secret's."""
    if job.secret:
        return job.secret
    from pipeline.folder.secret import parse_secret

    path = job.layout.secret_file
    if not path.exists():
        return b""
    return parse_secret(path.read_text(encoding="ascii", errors="replace"), f"{path}")


def input_digest(secret: bytes, anon_ids: Iterable[str], *, ordered: bool = False) -> str:
    """A digest of the set of inputs (their keyed anon_ids, in sorted order) under a key derived from the
    run's secret: equal for the same input and secret, and says nothing about any image without the secret.
    `ordered`: `anon_ids` come sorted already (a stream that is never held whole)."""
    key = hmac.new(secret or b"", INPUT_DIGEST_LABEL, hashlib.sha256).digest()
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for anon_id in anon_ids if ordered else sorted(anon_ids):
        mac.update(anon_id.encode("utf-8") + b"\n")
    return mac.hexdigest()[:32]


def report_settings(settings, mode: str, public: dict) -> dict:
    """The rows of the report's Settings: `public` (`JobSettings.public_dict`) cut to what made these outputs.

    An evaluate-only run shows the evaluation and the evaluated tool's label, never Boomerang's sampler; a run
    without the gate shows no ladder, a gate run no --levels; the enhance section only where enhance ran."""
    if mode == "evaluate":
        shown = {key: public[key] for key in EVALUATE_SETTINGS if key in public}
        shown["evaluated tool"] = settings.label or "another tool's output (no --label given)"
        return shown
    drop = set(_OUTPUT_ONLY)
    drop |= {"levels"} if settings.gate else set(_GATE_ONLY)
    if mode == "anonymize":
        drop |= {"evaluation", "eval_batch_size", "eval_workers", "eval_gpus_per_worker", "identity_from"}
    if not settings.region.faces:
        drop.add("accept_scene_linkage")
    return {key: value for key, value in public.items() if key not in drop}


def document_rows(
    record: dict, count: int, digest: str, what: str = "input", date: str | None = None
) -> dict[str, str]:
    """The report's document rows from run.json's `record`: date, tool version, the `what` set's count and
    keyed digest, the settings' fingerprint, and every weight file's sha256."""
    versions = record.get("versions") or {}
    rows = {
        "report made": date or now(),
        "tool": f"{TOOL} {versions.get(TOOL, 'unknown version')}",
        "command": str(record.get("command") or "?"),
        f"{what} fingerprint": f"{count} images, keyed digest {digest}",
    }
    model = record.get("model") or {}
    if model.get("weights_sha256") or model.get("commit"):
        rows["weights: diffusion model"] = (
            f"sha256 {model['weights_sha256']}" if model.get("weights_sha256") else f"hub commit {model['commit']}"
        )
    for name, found in sorted((record.get("recognizers") or {}).items()):
        if isinstance(found, dict) and found.get("weights_sha256"):
            random = " (random weights: numbers not meaningful)" if found.get("random_weights") else ""
            rows[f"weights: {name}"] = f"sha256 {found['weights_sha256']}{random}"
    return rows


# The internal report's pictures: small enough to judge the result, never the output itself (docs/privacy.md).
THUMBNAIL = 192


def thumbnail(png: bytes, side: int = THUMBNAIL) -> bytes:
    """`png` shrunk to fit `side` x `side` and to at most half its own size, re-encoded (no metadata)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        image = image.convert("RGB")
        # At most half the output's size as well: a thumbnail is never the output at its own resolution.
        limit = max(1, min(side, max(image.size) // 2))
        image.thumbnail((limit, limit))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return buffer.getvalue()
