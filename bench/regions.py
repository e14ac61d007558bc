"""Face-region mode: what an image costs against its number of faces and against its size.

Runs the real code path, `pipeline.execution.anonymize_stage.AnonymizeStage` (the Ray actor class), in this process, one
stage (one model load) for everything, at one torch thread, level 0.7, 10 steps, model batch 4. Each
stage call gets one image (a JPEG, quality 95, as a camera would write it) and writes its PNG to a
temporary folder. Runs are interleaved (every case once per repeat, after one warm-up call) because the
machine may be shared; medians are reported.

1. Faces: the astronaut at 280 px (where opencv reliably finds it) in the first k cells of a 5x4 grid of
   300 px cells on a 1500x1200 textured background, k = 1, 5, 20: seconds per image, per face, the ratio
   to one face, and UNet calls per image (a forward hook). The sampler pads every model call to the
   model batch, so an image alone in a call costs ceil(faces / model_batch) model batches; one extra row
   shows four one-face images sharing one call, as the pipeline batches them.
2. Size: one face (and two) at 280 px in 640x480 .. 4000x3000 textured scenes: seconds per image split
   into detection (deepface opencv), model (the sampler call), PNG encode, decode and the rest (file
   read, cut and paste, hashing, write), each timed inside the stage call by wrapping the functions the
   stage module calls.

It also redraws docs/img/regions.png (the tests' two-face scene, the boxes from the stage's `face_boxes`,
the stage's output) unless --no-figure.

    .venv/bin/python -m bench.regions --model tiny --repeats 3
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench import common
from bench.pipeline_overhead import resolve_model

sys.path.insert(0, str(common.ROOT / "tests"))

LEVEL, STEPS, MODEL_BATCH = 0.7, 10, 4
CELL, COLUMNS, ROWS = 300, 5, 4
FACE_COUNTS = (1, 5, 20)
SIZES = ((640, 480), (1280, 960), (2000, 1500), (4000, 3000))
FIGURE = common.ROOT / "docs" / "img" / "regions.png"
# The stage module's names timed inside a call (pipeline.execution.anonymize_stage imports them from anonymize / its
# own).
TIMED = {
    "read_bytes": "read",
    "decode_image": "decode",
    "detect_faces": "detect",
    "cut_region": "cut",
    "paste_regions": "paste",
    "encode_png": "encode",
}


def crowd(k: int):
    """The astronaut in the first k cells of the 5x4 grid on a 1500x1200 textured background."""
    from samples import FACE_SIZE, astronaut, textured_background

    image, face = textured_background(COLUMNS * CELL, ROWS * CELL), astronaut(FACE_SIZE)
    for i in range(k):
        image.paste(face, (CELL * (i % COLUMNS) + 10, CELL * (i // COLUMNS) + 10))
    return image


def sized(width: int, height: int, faces: int):
    """One face in the middle of a width x height textured scene, or two side by side."""
    from samples import FACE_SIZE, scene

    top = (height - FACE_SIZE) // 2
    if faces == 1:
        return scene(width, height, FACE_SIZE, (((width - FACE_SIZE) // 2, top),))
    gap = (width - 2 * FACE_SIZE) // 3
    return scene(width, height, FACE_SIZE, ((gap, top), (2 * gap + FACE_SIZE, top)))


class Clock:
    """Seconds spent in the stage module's functions (and the sampler) during one stage call."""

    def __init__(self, stage) -> None:
        import pipeline.execution.anonymize_stage as stages

        self.spent: dict[str, float] = defaultdict(float)
        self.unet_calls = 0
        import pipeline.folder.storage as storage

        for name, label in TIMED.items():
            setattr(stages, name, self._timed(getattr(stages, name), label))
        # The stage writes each output through the run folder's one writer (looked up on the module per call).
        storage.write_bytes = self._timed(storage.write_bytes, "write")
        stage._run_sampler = self._timed(stage._run_sampler, "model")
        stage.model.pipeline.unet.register_forward_hook(self._count)

    def _count(self, *_) -> None:
        self.unet_calls += 1

    def _timed(self, fn, label: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[label] += time.perf_counter() - began

        return timed

    def reset(self) -> None:
        self.spent.clear()
        self.unet_calls = 0


def batch_of(paths: list[Path]):
    import pandas as pd

    from pipeline.folder.secret import keyed_levels

    return pd.DataFrame(
        [
            {
                "image_id": path.name,
                "anon_id": f"a-{path.stem}",
                "source": str(path),
                "source_size": path.stat().st_size,
                "source_mtime": 0.0,
                "problem": None,
                **keyed_levels(b"k" * 32, 0, path.name, [LEVEL]),
            }
            for path in paths
        ]
    )


def measure(stage, clock: Clock, paths: list[Path]) -> dict:
    """One stage call on these images: total seconds and the split, per image; faces; UNet calls."""
    clock.reset()
    began = time.perf_counter()
    rows = stage(batch_of(paths))
    total = time.perf_counter() - began
    if not (rows["status"] == "ok").all():
        raise RuntimeError(f"stage rows not ok: {rows[['image_id', 'status', 'error']].to_dict('records')}")
    n = len(paths)
    split = {label: clock.spent.get(label, 0.0) / n for label in ("detect", "model", "encode", "decode")}
    known = sum(clock.spent.values()) / n - sum(split.values())  # read, cut, paste, write
    split["rest"] = total / n - sum(split.values())
    return {
        "total": total / n,
        **split,
        "io_cut_paste": known,
        "faces": int(rows["faces"].sum()) / n,
        "unet_calls": clock.unet_calls / n,
    }


def write_inputs(folder: Path) -> dict[str, list[Path]]:
    """Every case's input JPEGs; returns case name -> the files of one stage call."""
    folder.mkdir(parents=True)
    cases: dict[str, list[Path]] = {}

    def save(name: str, image) -> Path:
        path = folder / f"{name}.jpg"
        image.save(path, quality=95)
        return path

    for k in FACE_COUNTS:
        cases[f"faces{k}"] = [save(f"faces{k}", crowd(k))]
    cases["4x1face"] = [save(f"single{i}", sized(CELL, CELL, 1)) for i in range(4)]
    for faces in (1, 2):
        for width, height in SIZES:
            cases[f"{width}x{height}/{faces}"] = [save(f"size{width}x{height}f{faces}", sized(width, height, faces))]
    return cases


def figure(stage, folder: Path, panel: int = 400, pad: int = 12) -> Path:
    """docs/img/regions.png: the two-face test scene, its detector boxes and resampled squares, the output."""
    import json

    from PIL import Image, ImageDraw, ImageFont
    from samples import FACE_SIZE, scene

    folder.mkdir(parents=True)
    source = scene(900, 600, FACE_SIZE, ((100, 250), (520, 30)))
    path = folder / "two.png"
    source.save(path)
    rows = stage(batch_of([path]))
    row = rows.iloc[0]
    if row["status"] != "ok":
        raise RuntimeError(f"figure scene: {row['status']} {row['error']}")
    output = Image.open(Path(stage.config.out) / row["output_path"]).convert("RGB")
    faces = json.loads(row["face_boxes"])

    scale = panel / source.width
    height = round(source.height * scale)

    def small(image):
        return image.resize((panel, height), Image.Resampling.LANCZOS)

    boxed = small(source)
    draw = ImageDraw.Draw(boxed)
    for face in faces:
        square = [face["left"], face["top"], face["left"] + face["side"], face["top"] + face["side"]]
        box = [face["x"], face["y"], face["x"] + face["w"], face["y"] + face["h"]]
        draw.rectangle([round(v * scale) for v in square], outline=(232, 89, 12), width=3)
        draw.rectangle([round(v * scale) for v in box], outline=(47, 158, 68), width=3)

    try:
        font, note = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the bitmap font only
        font = note = ImageFont.load_default()
    titles = ("original scene", "detected faces and resampled squares", "output (random-weight tiny model)")
    caption = 46
    canvas = Image.new("RGB", (3 * panel + 4 * pad, height + 2 * pad + caption), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, title) in enumerate(zip((small(source), boxed, small(output)), titles, strict=True)):
        left = pad + i * (panel + pad)
        canvas.paste(image, (left, pad))
        width = draw.textlength(title, font=font)
        draw.text((left + (panel - width) / 2, pad + height + 6), title, fill="black", font=font)
    legend = [("green", (47, 158, 68), ": detector box    "), ("orange", (232, 89, 12), ": square resampled")]
    x = pad + panel + pad + (panel - sum(draw.textlength(a + b, font=note) for a, _, b in legend)) / 2
    for word, colour, rest in legend:
        draw.text((x, pad + height + 26), word, fill=colour, font=note)
        x += draw.textlength(word, font=note)
        draw.text((x, pad + height + 26), rest, fill=(80, 80, 80), font=note)
        x += draw.textlength(rest, font=note)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(FIGURE, optimize=True)
    if FIGURE.stat().st_size > 400_000:  # texture compresses badly: fall back to a 256-colour palette
        canvas.quantize(256, dither=Image.Dither.NONE).save(FIGURE, optimize=True)
    return FIGURE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny | medium | sd15 | a diffusers folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--big-repeats", type=int, default=None, help="repeats of the 4000x3000 cases (default: --repeats)"
    )
    parser.add_argument("--no-figure", action="store_true", help=f"do not (re)write {FIGURE.relative_to(common.ROOT)}")
    args = common.parse(parser, {"model": "tiny", "repeats": 1, "big_repeats": 0, "no_figure": True})
    big_repeats = args.repeats if args.big_repeats is None else args.big_repeats

    from anonymize import RegionSettings, SamplerSettings
    from pipeline.execution.anonymize_stage import AnonymizeConfig, AnonymizeStage

    model = resolve_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench-regions-"))
    try:
        cases = write_inputs(work / "in")
        settings = SamplerSettings(model=model, steps=STEPS, model_batch=MODEL_BATCH)
        config = AnonymizeConfig(str(work / "out"), 50_000_000, threads=1, region=RegionSettings("faces"))
        stage = AnonymizeStage(settings, config)
        threads = common.set_threads(1)
        clock = Clock(stage)
        measure(stage, clock, cases["faces5"])  # warm-up: deepface import, cascade load, first model call

        runs: dict[str, list[dict]] = defaultdict(list)
        names = list(cases)
        for repeat in range(max(args.repeats, big_repeats)):
            # Interleaved, and rotated so that no case always follows the same one.
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                big = name.startswith("4000x3000")
                if repeat >= (big_repeats if big else args.repeats):
                    continue
                runs[name].append(measure(stage, clock, cases[name]))
            print(f"repeat {repeat + 1} done", flush=True)
        if not args.no_figure:
            print(figure(stage, work / "figure"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    medians = {name: {key: common.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}

    one = medians["faces1"]["total"]
    face_rows = []
    for name in [f"faces{k}" for k in FACE_COUNTS] + ["4x1face"]:
        m = medians[name]
        face_rows.append(
            {
                "case": "4 images x 1 face, one call" if name == "4x1face" else f"{name[5:]} faces, 1500x1200",
                "faces/img": int(m["faces"]),
                "s/image": m["total"],
                "s/face": m["total"] / m["faces"],
                "x 1 face": m["total"] / one,
                "detect s/img": m["detect"],
                "model s/img": m["model"],
                "encode s/img": m["encode"],
                "unet calls/img": m["unet_calls"],
                "repeats": len(runs[name]),
            }
        )
    size_rows = []
    for faces in (1, 2):
        base = medians[f"640x480/{faces}"]
        for width, height in SIZES:
            name = f"{width}x{height}/{faces}"
            if name not in medians:
                continue
            m = medians[name]
            size_rows.append(
                {
                    "size": f"{width}x{height}",
                    "MP": width * height / 1e6,
                    "faces": int(m["faces"]),
                    "s/image": m["total"],
                    "detect": m["detect"],
                    "model": m["model"],
                    "encode": m["encode"],
                    "decode": m["decode"],
                    "rest": m["rest"],
                    "x smallest": m["total"] / base["total"],
                    "model x": m["model"] / base["model"],
                    "repeats": len(runs[name]),
                }
            )

    print(f"\nmodel {args.model}, level {LEVEL}, {STEPS} steps, model batch {MODEL_BATCH}, {threads} torch thread")
    print("\n1. cost per image against faces (medians; one image per stage call unless said)")
    print(common.table(face_rows, list(face_rows[0])))
    print("\n2. cost per image against size (medians, seconds per image; rest = read, cut, paste, hash, write)")
    print(common.table(size_rows, list(size_rows[0])))
    print(
        common.save(
            "regions",
            {
                "args": vars(args),
                "settings": {"level": LEVEL, "steps": STEPS, "model_batch": MODEL_BATCH, "threads": threads},
                "faces": face_rows,
                "sizes": size_rows,
                "runs": runs,
            },
        )
    )


if __name__ == "__main__":
    main()
