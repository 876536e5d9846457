"""The demo's report: a self-contained index.html with timings, settings, figures and final losses."""

import html
import os
from collections.abc import Sequence
from pathlib import Path

import attrs

from d2it.io import atomic_write_text

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.93em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { image-rendering: pixelated; border: 1px solid #ddd; max-width: 100%; }
figcaption { font-size: 0.88em; color: #555; max-width: 560px; }
.legend span { display: inline-block; width: 1em; height: 1em; vertical-align: middle; margin: 0 0.3em 0 0.8em; }
.muted { color: #777; } code { background: #f5f5f5; padding: 0 0.2em; }
.failed { color: #b00; font-weight: bold; }
"""


@attrs.define
class StepTiming:
    """One pipeline step: what ran, how long it took and how it ended."""

    name: str
    command: str
    seconds: float
    status: str = "ok"
    note: str = ""


@attrs.define
class Figure:
    """An image file in the report with its caption."""

    path: Path
    caption: str
    width: int | None = None


@attrs.define
class Section:
    """A titled block of text, tables and figures."""

    title: str
    text: str = ""
    figures: list = attrs.field(factory=list)
    tables: list = attrs.field(factory=list)  # (headers, rows) pairs
    html: str = ""  # extra markup (already escaped)


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(Path(path), root)).as_posix()


def table_html(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """An HTML table; numbers are right-aligned."""
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers) + "</tr>"]
    for row in rows:
        cells = []
        for v in row:
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            text = f"{v:.4g}" if isinstance(v, float) else str(v)
            cells.append(f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def timing_table(steps: Sequence[StepTiming]) -> str:
    """The per-step timing table with a total row."""
    rows = []
    for s in steps:
        status = s.status if s.status == "ok" else f"<span class='failed'>{html.escape(s.status)}</span>"
        rows.append(
            f"<tr><td>{html.escape(s.name)}</td><td><code>{html.escape(s.command)}</code></td>"
            f"<td class='num'>{s.seconds:.1f}</td><td>{status}</td><td>{html.escape(s.note)}</td></tr>"
        )
    total = sum(s.seconds for s in steps)
    rows.append(f"<tr><th>total</th><th></th><th class='num'>{total:.1f}</th><th></th><th></th></tr>")
    head = "<tr><th>step</th><th>command</th><th>seconds</th><th>status</th><th>result</th></tr>"
    return "<table>" + head + "\n".join(rows) + "</table>"


def figure_html(fig: Figure, root: Path) -> str:
    """An <figure> with a relative link to the image."""
    width = f' width="{fig.width}"' if fig.width else ""
    src = html.escape(_rel(fig.path, root))
    return (
        f'<figure><a href="{src}"><img src="{src}"{width} alt="{html.escape(fig.caption)}"></a>'
        f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
    )


GRAIN_LEGEND = (
    '<p class="legend">Grain maps use the paper\'s colours:<span style="background:#285aff"></span>coarse '
    '(one code per 16&times;16-pixel region, F=16)<span style="background:#ff2828"></span>fine (four codes, F=8)</p>'
)


def write_index(out: Path, title: str, intro: str, steps: Sequence[StepTiming], sections: Sequence[Section]) -> Path:
    """Write out/index.html and return its path."""
    out = Path(out)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{intro}</p>",
        "<h2>Pipeline and timings</h2>",
        timing_table(steps),
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{section.text}</p>")
        if section.html:
            parts.append(section.html)
        for headers, rows in section.tables:
            parts.append(table_html(headers, rows))
        parts.extend(figure_html(f, out) for f in section.figures)
    parts.append("</body></html>")
    path = out / "index.html"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
