"""The compliance report: one self-contained ``index.html`` (inline CSS, sample images as data URIs).

It shows what the caller passes and nothing else: originals appear only if the caller gives them
as samples, and the only raster images in the page are those samples, byte for byte, so a caller
can prove that a public page shows released images only. Plots follow the paper's Figure 5 (distance
and fraction cleared against level); they are inline SVG, also saved as SVG files next to the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from evaluation.files import write_atomic
from evaluation.report_blocks import Section, Table, frame_table
from evaluation.summary import protocol_label

DISTANCE_PLOT = "distance_vs_level.svg"
FRACTION_PLOT = "fraction_cleared_vs_level.svg"
# A report over a large failed run stays readable; the Parquet files hold every row.
MAX_FAILURE_ROWS = 500

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
.notice { background: #fff3cd; border: 2px solid #d39e00; padding: 0.8em 1em; font-weight: 600;
          margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.4em; text-align: right; vertical-align: top; }
th { background: #f0f2f5; }
td { white-space: nowrap; }
td.text, th.text { text-align: left; }
td.wrap { white-space: normal; overflow-wrap: anywhere; min-width: 12em; }
tr:nth-child(even) td { background: #fafbfc; }
.scroll { overflow-x: auto; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure.plot { margin: 0; }
.plots svg { max-width: 100%; width: 580px; height: auto; border: 1px solid #ddd; }
.samples { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 0.8em; }
.samples figure { margin: 0; font-size: 0.8em; text-align: center; word-break: break-all; }
.samples img { width: 100%; height: auto; border: 1px solid #ddd; }
.muted { color: #666; font-size: 0.9em; }
"""

# Columns of the summary table as shown, with their headings. The 95% interval is one column and
# deepface's default thresholds are in the threshold section, so the table fits the page.
_SUMMARY_VIEW = (
    ("label", "level"),
    ("recognizer", "recognizer"),
    ("n_images", "images"),
    ("n_faces", "faces"),
    ("n_evaluated", "evaluated"),
    ("n_no_face_original", "no face (original)"),
    ("n_no_face_anonymized", "no face (anonymized)"),
    ("n_compared_at_original_box", "at original's box"),
    ("n_errors", "errors"),
    ("n_missing_output", "missing output"),
    ("n_cleared", "cleared"),
    ("fraction_cleared", "fraction cleared"),
    ("ci", "95% interval"),
    ("n_images_cleared", "images cleared"),
    ("fraction_images_cleared", "fraction of images cleared"),
    ("distance_mean", "mean distance"),
    ("distance_std", "std"),
    ("distance_sem", "s.e."),
    ("distance_median", "median"),
    ("threshold", "threshold"),
    ("deepface_threshold", "deepface's threshold"),
)


_ORIGINAL_BOX_NOTE = (
    "At original's box: evaluated anonymized images in which the detector found no face, compared at the "
    "original's face box (the images are aligned), not on the whole image, so that merely hiding the face from "
    "the detector does not count as anonymizing it."
)


def write_report(report_dir: Path, **content) -> Path:
    """Write ``report_dir/index.html`` and the two plot SVGs (``render_report``'s files, index.html last);
    return the path of index.html."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    for name, text in render_report(**content).items():
        write_atomic(report_dir / name, text.encode("utf-8"))
    return report_dir / "index.html"


def render_report(
    *,
    title: str,
    settings: dict,
    versions: dict,
    summary: pd.DataFrame,
    failures: pd.DataFrame,
    samples: Sequence[tuple],
    notice: str | None = None,
    sections: Sequence[Section] = (),
    verdict: Sequence[str] = (),
    gate_thresholds: dict[str, float] | None = None,
    document: dict | None = None,
    samples_heading: str = "Sample anonymized images",
) -> dict[str, str]:
    """The report's files, name -> text: the two plot SVGs, then ``index.html`` (which embeds them).

    The page is the Jinja2 template ``templates/report.html.j2`` (autoescaped: every text given is escaped
    there). Its tables and sections are plain data (``evaluation.report_blocks``) that the template lays out;
    the only markup made here is the plots' SVG and the sample pictures' ``img`` elements.

    Args:
        title: page heading.
        settings: run settings, shown as readable rows (``setting_rows``: nested sections flattened, lists
            joined), never raw JSON.
        versions: software versions, shown as a table.
        summary: the ``summarize`` table.
        failures: rows to list as failures (any columns; the first ``MAX_FAILURE_ROWS``).
        samples: (caption, PNG bytes) of images to show, normally anonymized outputs only; a third item,
            boxes (left, top, width, height), draws them over the image (face-region mode's squares).
        notice: a banner shown at the top, e.g. that the numbers come from random-weight models.
        sections: extra sections (``report_blocks.Section``: paragraphs, notices, tables, plots) appended
            by the caller, laid out and escaped by the template.
        verdict: lines (text) that open the Summary: what is releasable at the gate's thresholds.
        gate_thresholds: recognizer -> the gate's threshold, drawn in both plots where it differs from the run's.
        document: what makes the page a document (date, tool version, input fingerprint, weights' hashes),
            shown under the verdict as rows.
        samples_heading: the heading of the pictures' section.
    """
    from markupsafe import Markup

    by_level = not summary.empty and summary["level"].notna().any()
    distance_svg = _distance_plot(summary, gate_thresholds or {})
    fraction_svg = _fraction_plot(summary)
    plots = []
    if not summary.empty:
        plots = [
            Markup(_inline_svg(distance_svg, "Mean cosine distance, with standard error bars and threshold lines")),
            Markup(_inline_svg(fraction_svg, "Fraction of images cleared, with 95% Wilson intervals")),
        ]
    page = _template().render(
        title=title,
        css=Markup(_CSS),
        notice=notice,
        verdict=list(verdict),
        document=list((document or {}).items()),
        summary_sentence=_summary_sentence(summary),
        summary_table=_summary_table(summary),
        faces_note=_FACES_NOTE if _by_face(summary) else None,
        original_box_note=_ORIGINAL_BOX_NOTE if not summary.empty else None,
        plots_heading="Distance and fraction cleared by level" if by_level else "Distance and fraction cleared",
        plots=plots,
        plots_caption=(
            "Left: mean cosine distance between each original and its anonymized image, error bars one standard "
            "error; dashed lines are the run's thresholds, dotted lines the gate's where they are stricter. Right: "
            "fraction of evaluated images whose distance is above the run's threshold (a recognizer would not "
            "match them), with 95% Wilson score intervals"
            + ("." if by_level else "; the outputs have no level, so each is plotted by its label.")
        ),
        threshold_table=_threshold_table(summary),
        samples_heading=samples_heading,
        samples=[
            {"image": Markup(_img_with_boxes(s[1], s[0], s[2] if len(s) > 2 else ())), "caption": s[0]} for s in samples
        ],
        failures=_failures(failures),
        sections=list(sections),
        settings=setting_rows(settings),
        versions=[(key, _as_text(value)) for key, value in (versions or {}).items()],
    )
    return {DISTANCE_PLOT: distance_svg, FRACTION_PLOT: fraction_svg, "index.html": page}


def _template():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("evaluation", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return environment.get_template("report.html.j2")


def setting_rows(settings: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Settings as (name, readable value) rows: nested sections flattened ("evaluation: threshold"), lists and
    (name, value) pairs joined with commas, booleans as yes/no, unset as "–"; never raw JSON."""
    rows = []
    for key, value in (settings or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += setting_rows(value, f"{name}: ")
        else:
            rows.append((name, _readable(value)))
    return rows


def _readable(value) -> str:
    if value is None or value == {} or value == [] or value == ():
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(
            " ".join(_readable(v) for v in item) if isinstance(item, (list, tuple)) else _readable(item)
            for item in value
        )
    if isinstance(value, dict):
        return ", ".join(f"{k} {_readable(v)}" for k, v in value.items())
    return str(value)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _img_with_boxes(png: bytes, alt: str, boxes: Sequence[tuple[int, int, int, int]]) -> str:
    """The image, and where ``boxes`` (left, top, width, height in its pixels) are given, an SVG drawn over it.

    The boxes are vector shapes on top of the picture, not painted into it, so the embedded PNG stays the
    exact bytes it was given (a released file, say).
    """
    if not boxes:
        return _img(png, alt)
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        width, height = img.size
    stroke = max(1.0, min(width, height) / 150)
    rects = "".join(
        f'<rect x="{int(x)}" y="{int(y)}" width="{int(w)}" height="{int(h)}" fill="none" stroke="#e8590c" '
        f'stroke-width="{stroke:.1f}"/>'
        for x, y, w, h in boxes
    )
    overlay = (
        f'<svg viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
        f'style="position:absolute;left:0;top:0;width:100%;height:100%">{rects}</svg>'
    )
    return f'<div style="position:relative;line-height:0">{_img(png, alt)}{overlay}</div>'


def _by_face(summary: pd.DataFrame) -> bool:
    """Face-region mode: the rows count faces."""
    return not summary.empty and "n_faces" in summary and summary["n_faces"].notna().any()


def _summary_table(summary: pd.DataFrame) -> Table | None:
    if summary.empty:
        return None
    view = summary.assign(
        ci=[
            "–" if math.isnan(low) else f"{low:.3f}–{high:.3f}"
            for low, high in zip(summary["ci_low"], summary["ci_high"], strict=True)
        ]
    )
    # Face-region mode's columns only where rows are faces; elsewhere they repeat the image columns.
    shown = [(c, h) for c, h in _SUMMARY_VIEW if _by_face(summary) or c not in _FACE_COLUMNS]
    # reindex: a summary written before a column existed shows "–" there.
    return frame_table(view.reindex(columns=[c for c, _ in shown]), [h for _, h in shown])


_FACE_COLUMNS = ("n_faces", "n_images_cleared", "fraction_images_cleared")
_FACES_NOTE = (
    "Face-region mode: each face is compared with the output at the same place, so the counts from evaluated "
    "to the interval are faces; an image is cleared when every one of its faces is."
)


def _summary_sentence(summary: pd.DataFrame) -> dict | None:
    """{"label": the protocol, "items": one line per recognizer} of the cleared counts; None when none."""
    if summary.empty:
        return None
    items = []
    for recognizer, rows in summary.groupby("recognizer", sort=False):
        parts = []
        for row in rows.itertuples(index=False):
            trials = row.n_evaluated + getattr(row, "n_missing_output", 0)
            if trials:
                name = getattr(row, "label", None) or f"level {row.level:g}"
                parts.append(f"{name}: {row.n_cleared}/{trials} cleared")
        if parts:
            items.append(f"{recognizer}: {'; '.join(parts)}")
    return {"label": protocol_label(summary), "items": items} if items else None


def _threshold_table(summary: pd.DataFrame) -> Table | None:
    """Per recognizer the threshold used and deepface's own (the text around it is the template's)."""
    if summary.empty:
        return None
    per = summary.drop_duplicates("recognizer")[["recognizer", "threshold", "deepface_threshold"]]
    return frame_table(per, ["recognizer", "threshold used", "deepface default (cosine)"])


def _failures(failures: pd.DataFrame) -> dict | None:
    """{"note": how many are shown, or None; "table"} of the failures (the first ``MAX_FAILURE_ROWS``)."""
    if failures is None or failures.empty:
        return None
    shown = failures.head(MAX_FAILURE_ROWS)
    note = f"First {len(shown)} of {len(failures)} failures." if len(failures) > len(shown) else None
    return {"note": note, "table": frame_table(shown)}


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


def _figure() -> tuple[Figure, object]:
    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _svg(figure: Figure) -> str:
    import matplotlib

    buffer = io.StringIO()
    figure.tight_layout()
    # No metadata and fixed element ids: the text depends on the data only.
    with matplotlib.rc_context({"svg.hashsalt": "boomerang", "svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return buffer.getvalue()


def _inline_svg(svg: str, title: str) -> str:
    """An SVG document as an element of the page, titled for screen readers."""
    start = svg.index("<svg")
    head_end = svg.index(">", start) + 1
    # Inline SVG in HTML needs no namespace declarations (and the page then names no URL at all).
    head = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", svg[start:head_end])
    body = re.sub(r"<metadata>.*?</metadata>", "", svg[head_end:], flags=re.DOTALL)
    return f'<figure class="plot" role="img" aria-label="{_e(title)}">{head}<title>{_e(title)}</title>{body}</figure>'


def _no_data(axes, message: str = "no evaluated images") -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color="#666")


def _x(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows a plot draws and its x column: by level where the run has levels (rows without one left to the
    table), else by label (another tool's output: one position per label), so no plot is an empty box."""
    if summary.empty or summary["level"].notna().any():
        return summary[summary["level"].notna()].assign(x=lambda d: d["level"].astype(float)), "level"
    labels = list(dict.fromkeys(summary["label"].fillna("no level").astype(str)))
    return summary.assign(x=summary["label"].fillna("no level").astype(str).map(labels.index).astype(float)), "label"


def _dodge(summary: pd.DataFrame, index: int) -> float:
    # Shift each recognizer's points a little sideways so error bars at one level do not overlap.
    count = summary["recognizer"].nunique()
    span = float(summary["x"].max() - summary["x"].min()) or 1.0
    return (index - (count - 1) / 2) * 0.012 * span


def _finish_axes(axes, summary: pd.DataFrame, plotted: bool, kind: str = "level") -> None:
    if not plotted:
        _no_data(axes)
        return
    if kind == "label":
        labels = list(dict.fromkeys(summary["label"].fillna("no level").astype(str)))
        axes.set_xticks(range(len(labels)))
        axes.set_xticklabels(labels)
        axes.set_xlim(-0.5, len(labels) - 0.5)
        axes.set_xlabel("output (no level: labelled)")
    else:
        levels = sorted(summary["level"].unique())
        # Ticks at the levels that were run, not matplotlib's 0.025 steps between them.
        if len(levels) <= 12:
            axes.set_xticks(levels)
            axes.set_xticklabels([f"{level:g}" for level in levels])
    axes.legend(fontsize="small")


def _threshold_lines(axes, summary: pd.DataFrame, colors: dict, gate_thresholds: dict[str, float]) -> None:
    """Every threshold the report mentions: the run's (dashed) and the gate's where it differs (dotted)."""
    if summary.empty:
        return
    thresholds = summary.drop_duplicates("recognizer")[["recognizer", "threshold"]]
    if thresholds["threshold"].nunique() == 1:
        axes.axhline(thresholds["threshold"].iloc[0], color="black", linestyle="--", linewidth=1, label="threshold")
    else:
        for row in thresholds.itertuples(index=False):
            axes.axhline(
                row.threshold,
                color=colors.get(row.recognizer, "black"),
                linestyle="--",
                linewidth=1,
                label=f"threshold {row.recognizer}",
            )
    run = dict(zip(thresholds["recognizer"], thresholds["threshold"].astype(float), strict=True))
    for recognizer, value in (gate_thresholds or {}).items():
        if recognizer in run and value != run[recognizer]:
            axes.axhline(
                value,
                color=colors.get(recognizer, "black"),
                linestyle=":",
                linewidth=1,
                label=f"gate threshold {recognizer} ({value:g})",
            )


def _distance_plot(summary: pd.DataFrame, gate_thresholds: dict[str, float] | None = None) -> str:
    figure, axes = _figure()
    shown, kind = _x(summary)
    axes.set_xlabel("anonymity level (t_boom / T)")
    axes.set_ylabel("cosine distance to original")
    axes.set_title("Mean distance by " + kind + " (± 1 s.e.)")
    plotted = False
    colors = {}
    for i, (recognizer, rows) in enumerate(shown.groupby("recognizer", sort=False)):
        rows = rows[rows["distance_mean"].notna()].sort_values("x")
        if rows.empty:
            continue
        line = axes.errorbar(
            rows["x"] + _dodge(shown, i),
            rows["distance_mean"],
            yerr=rows["distance_sem"].fillna(0.0),
            marker="o",
            capsize=3,
            label=str(recognizer),
        )
        colors[recognizer] = line[0].get_color()
        plotted = True
    # The gate decides at its own thresholds: every threshold the report mentions is drawn.
    _threshold_lines(axes, summary, colors, gate_thresholds or {})
    _finish_axes(axes, shown, plotted, kind)
    return _svg(figure)


def _fraction_plot(summary: pd.DataFrame) -> str:
    figure, axes = _figure()
    shown, kind = _x(summary)
    axes.set_xlabel("anonymity level (t_boom / T)")
    axes.set_ylabel("fraction cleared (at the run's threshold)")
    axes.set_title("Fraction cleared by " + kind + " (95% Wilson interval)")
    axes.set_ylim(-0.03, 1.03)
    plotted = False
    for i, (recognizer, rows) in enumerate(shown.groupby("recognizer", sort=False)):
        rows = rows[rows["fraction_cleared"].notna()].sort_values("x")
        if rows.empty:
            continue
        fraction = rows["fraction_cleared"].to_numpy(dtype=float)
        low = rows["ci_low"].to_numpy(dtype=float)
        high = rows["ci_high"].to_numpy(dtype=float)
        error = np.clip(np.vstack([fraction - low, high - fraction]), 0, None)
        axes.errorbar(rows["x"] + _dodge(shown, i), fraction, yerr=error, marker="o", capsize=3, label=str(recognizer))
        plotted = True
    _finish_axes(axes, shown, plotted, kind)
    return _svg(figure)


def linkage_plot_html(summary: pd.DataFrame) -> str:
    """An inline SVG: the linkage attack's rank-1 rate by level per recognizer (95% Wilson intervals), with
    the rate of an attacker who guesses as a dashed line; "" when the summary has no attack results."""
    rows = summary[summary["linkage_rank1"].notna() & summary["level"].notna()] if "linkage_rank1" in summary else []
    if len(rows) == 0:
        return ""
    rows = rows.assign(x=rows["level"].astype(float))
    figure, axes = _figure()
    axes.set_xlabel("anonymity level (t_boom / T)")
    axes.set_ylabel("linkage rank-1 rate")
    axes.set_title("Outputs whose own original ranks first (95% Wilson interval)")
    axes.set_ylim(-0.03, 1.03)
    for i, (recognizer, mine) in enumerate(rows.groupby("recognizer", sort=False)):
        mine = mine.sort_values("level")
        rate = mine["linkage_rank1"].to_numpy(dtype=float)
        error = np.clip(
            np.vstack(
                [rate - mine["linkage_rank1_ci_low"].to_numpy(dtype=float), mine["linkage_rank1_ci_high"] - rate]
            ),
            0,
            None,
        )
        axes.errorbar(mine["level"] + _dodge(rows, i), rate, yerr=error, marker="o", capsize=3, label=str(recognizer))
    chance = rows.groupby("level")["linkage_chance1"].mean().sort_index()
    axes.plot(chance.index, chance.to_numpy(dtype=float), color="black", linestyle="--", linewidth=1, label="chance")
    _finish_axes(axes, rows, True)
    return _inline_svg(_svg(figure), "Linkage attack rank-1 rate by level, with 95% Wilson intervals and chance")
