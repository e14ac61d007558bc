"""The gate's policy and thresholds, in one place: each rule --gate enforces (and --gate-override may break, said
first in both reports and run.json), and the threshold per recognizer the gate decides with (finalize states the
verdict at the same ones). Settings are duck-typed here (pipeline.settings.config.JobSettings)."""

from __future__ import annotations

import math

# The gate's policy (docs/privacy.md): each rule --gate enforces, by the name --gate-override gives it, and what
# breaking it costs (said in the refusal and, when overridden, first in both reports and run.json).
GATE_OVERRIDES = {
    "detector-skip": "looks for no face, so an original with no face is compared as if it had one and the rule "
    "'an original with no face is withheld' cannot hold",
    "whole-image": "compares an output whose face the detector misses on the whole image, so hiding the face "
    "from the detector counts as clearing it",
    "samples": "releases whichever of the samples of an image fooled the certifying recognizers (best-of-K "
    "against the judge), and several variants of one face",
    "thresholds": "sets a gate threshold below deepface's own, so the gate may release images that "
    "DeepFace.verify calls the same person as their original",
}
_BREACH_FLAGS = {
    "detector-skip": lambda s: "--detector skip",
    "whole-image": lambda s: "--no-face-anonymized whole_image",
    "samples": lambda s: f"--samples {s.samples}",
    "thresholds": lambda s: (
        "--gate-thresholds "
        + ",".join(f"{n}={g:g} (deepface's own {own:g})" for n, (g, own) in lowered_gate_thresholds(s).items())
    ),
}


def gate_policy_breaches(settings) -> list[str]:
    """The gate-policy rules (GATE_OVERRIDES names) these settings break; none without --gate."""
    if not settings.gate:
        return []
    evaluation = settings.evaluation
    found = {
        "detector-skip": evaluation.detector == "skip",
        "whole-image": evaluation.no_face_anonymized == "whole_image",
        "samples": settings.samples > 1,
        "thresholds": bool(settings.gate_thresholds) and bool(lowered_gate_thresholds(settings)),
    }
    return [name for name in GATE_OVERRIDES if found[name]]


def lowered_gate_thresholds(settings) -> dict[str, tuple[float, float]]:
    """Recognizers whose explicit gate threshold is below deepface's own: name -> (gate, deepface's)."""
    if not settings.gate_thresholds:
        return {}
    from evaluation.summary import deepface_threshold

    evaluation = settings.evaluation
    lowered = {}
    for name, value in settings.gate_thresholds:
        own = deepface_threshold(name, evaluation.metric, evaluation.engine)
        if not math.isnan(own) and value < own:
            lowered[name] = (value, own)
    return lowered


def override_statement(settings) -> str | None:
    """The sentence both reports and run.json open with when --gate-override is in effect; None when not."""
    names = settings.overrides_in_effect()
    if not names:
        return None
    return (
        f"GATE POLICY OVERRIDDEN (--gate-override {','.join(names)}): this release was made although "
        f"{_broken(settings, names)}. The release guarantees of docs/privacy.md do not hold for it."
    )


def _broken(settings, names) -> str:
    """Each named rule's flag and what breaking it costs, joined by semicolons."""
    return "; ".join(f"{_BREACH_FLAGS[name](settings)} {GATE_OVERRIDES[name]}" for name in names)


def gate_policy_refusal(settings) -> str | None:
    """The one line --gate refuses these settings with (an unknown override, or a rule broken without its
    --gate-override); None when they may run."""
    unknown = sorted(set(settings.gate_override) - set(GATE_OVERRIDES))
    if unknown:
        return f"--gate-override: unknown rule(s) {', '.join(unknown)}; the rules are {', '.join(GATE_OVERRIDES)}"
    broken = [name for name in gate_policy_breaches(settings) if name not in settings.gate_override]
    if not broken:
        return None
    return (
        f"--gate refused: {_broken(settings, broken)}; pass --gate-override {','.join(broken)} to release anyway (both "
        "reports and run.json then say so first; docs/privacy.md)"
    )


def gate_thresholds(settings) -> dict[str, float]:
    """Per recognizer, the threshold the gate decides with (see the module docstring)."""
    from evaluation.summary import deepface_threshold

    evaluation = settings.evaluation
    explicit = dict(settings.gate_thresholds)
    found = {}
    for name in evaluation.recognizers:
        if name in explicit:
            found[name] = explicit[name]
            continue
        own = deepface_threshold(name, evaluation.metric, evaluation.engine)
        found[name] = (
            max(evaluation.threshold_for(name), own) if not math.isnan(own) else evaluation.threshold_for(name)
        )
    return found
