"""`boomerang weights fetch|push`: every weight file a job needs onto this node, or pushed to a store
(pipeline.weights)."""

from __future__ import annotations

import os

from pipeline.weights.files import one_line
from pipeline.weights.needs import WeightsError, is_local_model, needs
from pipeline.weights.store import fetch, push


def cmd_weights(args) -> int:
    """`boomerang weights fetch|push` from parsed flags (defaults: the job's own recognizers and model)."""
    from anonymize import SamplerSettings
    from evaluation import EvaluationSettings

    if args.deepface_home:
        os.environ["DEEPFACE_HOME"] = os.path.abspath(os.path.expanduser(args.deepface_home))
    names = args.recognizers.split(",") if args.recognizers else EvaluationSettings().recognizers
    model = None if args.no_model else args.model or SamplerSettings().model
    if model and is_local_model(model):
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
        raise WeightsError(one_line(err)) from None
    if args.weights_command == "push":
        copied = push(want, args.dest)
        print(f"pushed {len(copied)} file(s) to {args.dest} (weights.json lists every file a job needs)")
        return 0
    for line in fetch(want, args.source):
        print(line)
    return 0
