"""The demo's report: a self-contained index.html with timings, settings, figures and final losses."""

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import torch

from d2it import system as systems
from d2it.io import atomic_write_text
from d2it.layout import fine_ratio
from d2it.parts import load_vae
from d2it_cli import images as imgs
from d2it_cli.data import open_dataset
from d2it_cli.engine.loop import read_log
from d2it_cli.generation import NPZ_NAME, load_samples

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


# -- the demo's figures -------------------------------------------------------------------------------
# keys of a training log that are bookkeeping, not losses
NOT_LOSSES = {
    "step",
    "epoch",
    "lr",
    "lr_factor",
    "images_per_s",
    "time",
    "fine_ratio",
    "d_weight",
    "logits_real",
    "logits_fake",
    "reg",
}


def _zoom(size: int) -> int:
    """Integer enlargement that shows an image of `size` pixels at 64 pixels or more."""
    return max(1, math.ceil(64 / size))


def class_rows(images: np.ndarray, labels: np.ndarray, grain_maps, num_classes: int, per_class: int, grains: int):
    """One labelled row per class: its images, and under them their grain-map overlays when given."""
    rows = []
    zoom = _zoom(images.shape[1])
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)[:per_class]
        if not len(idx):
            continue
        big = imgs.upscale(images[idx], zoom)
        row = [imgs.make_grid(big, nrow=per_class, padding=2)]
        if grain_maps is not None:
            over = imgs.grain_overlay(big, np.asarray(grain_maps)[idx].astype(np.int64), grains=grains)
            row.append(imgs.make_grid(over, nrow=per_class, padding=2))
        rows.append(imgs.label_image(imgs.vstack(row, gap=0), f"class {c}"))
    return imgs.vstack(rows, gap=6) if rows else None


def loss_figures(run_dirs: dict, out_dir: Path) -> tuple[list, list]:
    """(figures, final-loss rows) from the JSON-lines logs of the training runs."""

    figures, finals = [], []
    for name, run_dir in run_dirs.items():
        log = read_log(run_dir)
        if not log:
            continue
        keys = sorted({k for r in log for k, v in r.items() if k not in NOT_LOSSES and isinstance(v, (int, float))})
        keys = [k for k in keys if any(abs(r.get(k, 0.0)) > 0 for r in log)]
        if "loss" in keys:  # the total first
            keys.remove("loss")
            keys.insert(0, "loss")
        series = {k: [(r["step"], r[k]) for r in log if k in r] for k in keys[:5]}
        positive = all(v > 0 for pts in series.values() for _, v in pts)
        path = out_dir / f"loss_{name.replace(' ', '_')}.png"
        imgs.plot_curves(series, path, title=f"{name}: training losses", log_y=positive)
        figures.append(Figure(path, f"{name}: losses logged every few steps ({len(log)} points)"))
        last = log[-1]
        finals.append(
            [
                name,
                int(last["step"]),
                *(round(float(last.get(k, float("nan"))), 5) for k in ("loss",)),
                ", ".join(f"{k}={last[k]:.4g}" for k in keys[1:5] if k in last),
            ]
        )
    return figures, finals


def spread(count: int, total: int) -> list[int]:
    """`count` indices spread evenly over range(total) (all of them when total <= count)."""
    if total <= count:
        return list(range(total))
    return [i * total // count for i in range(count)]


def load_images(data: str, image_size: int, count: int, options: dict | None = None, spread_out: bool = False):
    """(images (N, 3, H, W) in [-1, 1], labels, dataset) of the first `count` images of `data` (or spread over it)."""
    dataset = open_dataset(data, image_size, train=False, options=options)
    indices = spread(count, len(dataset)) if spread_out else range(min(len(dataset), count))
    batch = [dataset[i] for i in indices]
    return torch.stack([b[0] for b in batch]), np.array([int(b[1]) for b in batch]), dataset


@torch.no_grad()
def data_and_reconstructions(
    system_dir: Path, images: torch.Tensor, labels: np.ndarray, num_classes: int, out_dir: Path, device: str, what: str
):
    """Figures of data images by class (with their entropy grain maps) and of DVAE reconstructions of them."""

    image_size = images.shape[-1]
    per_class = max(1, len(images) // max(1, num_classes))
    figures = []
    record, vae = load_vae(system_dir, device=device)
    vae.eval()
    out = vae(images.to(device), mode=True)
    grain_maps = out.grain_map.cpu().numpy()
    grains = int(getattr(vae, "grains", 2))
    data_grid = class_rows(imgs.to_uint8(images), labels, grain_maps, num_classes, per_class, grains)
    imgs.save_png(data_grid, out_dir / "data_by_class.png")
    figures.append(
        Figure(
            out_dir / "data_by_class.png",
            f"{what}, one row per class, each with the grain map the DVAE's entropy coder assigns "
            "(blue coarse, red fine).",
        )
    )
    n = min(8, len(images))
    zoom = _zoom(image_size)
    rows = [("input", imgs.to_uint8(images[:n])), ("reconstruction", imgs.to_uint8(out.recon[:n].clamp(-1, 1)))]
    rows.append(("grain map", imgs.grain_overlay(imgs.to_uint8(images[:n]), grain_maps[:n].astype(np.int64), grains)))
    if getattr(out, "entropy", None) is not None:
        bins = getattr(getattr(vae, "coder", None), "bins", None)
        rows.append(
            (
                "region entropy",
                imgs.entropy_heatmap(out.entropy[:n].cpu(), size=image_size, vmax=math.log(bins) if bins else None),
            )
        )
    panel = imgs.vstack([imgs.label_image(imgs.make_grid(imgs.upscale(a, zoom), nrow=n), t) for t, a in rows])
    imgs.save_png(panel, out_dir / "reconstructions.png")
    l1 = float((out.recon.clamp(-1, 1).cpu() - images).abs().mean())
    figures.append(
        Figure(
            out_dir / "reconstructions.png",
            f"DVAE on {what.lower()}: inputs, reconstructions (posterior mode; mean L1 {l1:.3f} on [-1, 1] over "
            f"{len(images)} images), grain maps and region entropy (dark low, bright high).",
        )
    )
    return figures, {"recon_l1": l1, "fine_ratio_data": fine_ratio(grain_maps)}, grain_maps


def paired_rows(images: np.ndarray, grain_maps, per_row: int, grains: int, zoom: int = 1) -> np.ndarray:
    """Rows of `per_row` uint8 NHWC images, each row followed by the same images' grain-map overlays."""
    big = imgs.upscale(images, zoom)
    over = imgs.grain_overlay(big, np.asarray(grain_maps).astype(np.int64), grains=grains)
    rows = []
    for start in range(0, len(big), per_row):
        rows.append(imgs.make_grid(big[start : start + per_row], nrow=per_row, padding=2))
        rows.append(imgs.make_grid(over[start : start + per_row], nrow=per_row, padding=2))
    return imgs.vstack(rows, gap=0)


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC (as samples.npz stores them) -> uint8 NCHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


SWD_TEXT = (
    "The multi-scale sliced Wasserstein distance (SWD, Karras et al. 2018) compares the distribution of "
    "7&times;7-pixel neighbourhoods of two image sets at every level of a Laplacian pyramid ({levels} "
    "pixels: the finest level measures edges and texture, the coarsest colours and shapes), &times;10&sup3;; "
    "<b>lower is better</b> and 0 means identical sets. It needs no downloaded network, unlike FID. The "
    "floor is the SWD of as many real training images against the same held-out split: what a perfect "
    "model would score with this many samples."
)


def swd_section(samples: np.ndarray, heldout: torch.Tensor, train: torch.Tensor, seed: int = 0):
    """(Section, results) with the SWD of samples and of real training images against the held-out images."""
    from d2it_cli.evaluation.swd import sliced_wasserstein

    real = to_nchw(imgs.to_uint8(heldout))
    model = sliced_wasserstein(to_nchw(samples), real, seed=seed)
    floor = sliced_wasserstein(to_nchw(imgs.to_uint8(train)), real, seed=seed)
    keys = sorted((k for k in model if k != "swd"), key=lambda k: -int(k.split("_")[1]))
    rows = [[f"{k.split('_')[1]} px", round(model[k], 2), round(floor[k], 2)] for k in keys]
    rows.append(["mean", round(model["swd"], 2), round(floor["swd"], 2)])
    headers = [
        "pyramid level",
        f"{len(samples)} samples vs {len(real)} held-out",
        f"{len(train)} training images vs {len(real)} held-out (floor)",
    ]
    text = SWD_TEXT.format(levels=", ".join(k.split("_")[1] for k in keys)) + html.escape(
        f" Samples: {model['swd']:.1f}; floor: {floor['swd']:.1f} (ratio {model['swd'] / max(floor['swd'], 1e-9):.1f})."
    )
    results = {
        "swd": {k: round(v, 3) for k, v in model.items()},
        "swd_floor": {k: round(v, 3) for k, v in floor.items()},
        "swd_samples": int(len(samples)),
        "swd_heldout": int(len(real)),
    }
    return Section("Sliced Wasserstein distance to held-out emoji", text=text, tables=[(headers, rows)]), results


def attribution_html(provenance: dict) -> str:
    """The dataset's source, licence and attribution line as HTML."""
    e = html.escape
    return (
        f'<p>Images: <a href="{e(provenance.get("url", ""))}">{e(provenance.get("name", "OpenMoji"))}</a> '
        f"{e(provenance.get('version', ''))}, rendered at {e(str(provenance.get('image_size', '')))} px with "
        f"{e(provenance.get('renderer', 'resvg'))} over {e(provenance.get('background', ''))}. "
        f"{e(provenance.get('attribution', ''))} "
        f'(<a href="{e(provenance.get("license_url", ""))}">{e(provenance.get("license", ""))}</a>). '
        f"Held-out split: {e(provenance.get('split_rule', ''))}.</p>"
    )


def sample_figures(samples_dir: Path, num_classes: int, grains: int, out_dir: Path):
    """Generated samples by class with their grain maps, from samples.npz."""

    path = samples_dir / NPZ_NAME
    if not path.is_file():
        return [], {}
    arrays = load_samples(path)
    images, labels, maps = arrays["arr_0"], arrays["labels"], arrays.get("grain_maps")
    per_class = max(1, min(8, math.ceil(len(images) / max(1, num_classes))))
    grid = class_rows(images, labels, maps, num_classes, per_class, grains)
    if grid is None:
        return [], {}
    imgs.save_png(grid, out_dir / "samples_by_class.png")
    fig = Figure(
        out_dir / "samples_by_class.png",
        "Generated samples, one row per class: the grain transformer samples a grain map, the content "
        "transformer denoises multi-grained latents for it, the DVAE decodes them. Under each row: the "
        "sampled grain maps (blue coarse, red fine).",
    )
    stats = {"samples": int(len(images))}
    if maps is not None and len(maps):
        stats["fine_ratio_samples"] = fine_ratio(maps)
    return [fig], stats


def system_section(demo, record) -> Section:
    """The components and the demo's settings."""
    plan = demo.plan
    comp = [[slot, name] for slot, name in record.slot_names().items()]
    if plan.data == "synthetic":
        data, classes = f"{plan.num_images} (synthetic)", plan.num_classes
    else:
        data, classes = f"{plan.num_images or 'all'} of the {plan.data} train split", "1 (unconditional)"
    sampler = plan.sampler or "the system's sampler"
    settings = [
        ["image size", f"{plan.image_size}x{plan.image_size}"],
        ["training images", data],
        ["classes", classes],
        ["device", demo.device],
        ["latent scale", round(record.latent_scale, 4)],
        ["entropy thresholds", ", ".join(f"{t:.3f}" for t in record.thresholds) or "-"],
        ["DVAE steps x batch", f"{plan.dvae_steps} x {plan.dvae_batch}"],
        ["grain steps x batch", f"{plan.grain_steps} x {plan.grain_batch}"],
        ["content steps x batch", f"{plan.content_steps} x {plan.content_batch}"],
        ["sampling", f"{plan.sample_num} samples, {plan.sample_steps} steps of {sampler}, cfg {plan.cfg_scale}"],
    ]
    options = "; ".join(
        f"{k}: {', '.join(f'{o}={v}' for o, v in opts.items())}"
        for k, opts in (("vae", plan.vae), ("backbone", plan.backbone), ("grain", plan.grain))
        for opts in [dict(s.split(".", 1)[1].split("=", 1) for s in opts)]
        if opts
    )
    return Section(
        "System",
        text=html.escape(f"Overrides: {options}") if options else "",
        tables=[(["slot", "component"], comp), (["setting", "value"], settings)],
    )


def synthetic_sections(demo, fig_dir: Path, trained_vae: bool) -> list:
    """Samples by class next to training images by class, and reconstructions (the synthetic data)."""
    plan, stats, sections = demo.plan, demo.results, []
    samples = []
    if (demo.samples_dir / NPZ_NAME).is_file():
        samples, s_stats = sample_figures(demo.samples_dir, plan.num_classes, 2, fig_dir)
        stats.update(s_stats)
    data_figs = []
    if trained_vae:
        images, labels, _ = load_images(demo.data, plan.image_size, plan.num_classes * 8, demo.data_options)
        data_figs, d_stats, _ = data_and_reconstructions(
            demo.system_dir, images, labels, plan.num_classes, fig_dir, demo.device, "Training images (synthetic data)"
        )
        stats.update(d_stats)
    if samples or data_figs:
        text = (
            "Compare each class's generated row with the same class's training row: the class sets the hue "
            "and the preferred texture of the rectangles."
        )
        if "fine_ratio_samples" in stats and "fine_ratio_data" in stats:
            text += (
                f" Fine regions: {100 * stats['fine_ratio_data']:.0f}% in the data, "
                f"{100 * stats['fine_ratio_samples']:.0f}% in the sampled grain maps."
            )
        sections.append(
            Section("Samples and data", text=html.escape(text) + GRAIN_LEGEND, figures=samples + data_figs[:1])
        )
    if len(data_figs) > 1:
        sections.append(Section("DVAE reconstructions", figures=data_figs[1:]))
    return sections


SHOWN = 16  # generated and held-out images shown side by side


def heldout_sections(demo, fig_dir: Path, trained_vae: bool) -> list:
    """Generated images next to held-out real ones (both with grain maps), the SWD, reconstructions, attribution."""
    plan, stats, sections = demo.plan, demo.results, []
    heldout, _, dataset = load_images(demo.heldout, plan.image_size, 10**9)  # the whole held-out split
    provenance = dataset.provenance() if hasattr(dataset, "provenance") else {}
    stats["heldout"] = {k: provenance[k] for k in ("name", "version", "license", "split", "images") if k in provenance}
    shown = heldout[spread(SHOWN, len(heldout))]
    figures, maps = [], None
    if trained_vae:
        recon_figs, d_stats, maps = data_and_reconstructions(
            demo.system_dir,
            shown,
            np.zeros(len(shown), np.int64),
            1,
            fig_dir,
            demo.device,
            f"Held-out images ({demo.heldout})",
        )
        stats.update(d_stats)
        figures = recon_figs[1:]
    path = demo.samples_dir / NPZ_NAME
    samples = load_samples(path) if path.is_file() else None
    panels = []
    if samples is not None:
        images, sample_maps = samples["arr_0"], samples.get("grain_maps")
        if sample_maps is not None and len(sample_maps):
            stats["fine_ratio_samples"] = fine_ratio(sample_maps)
            grid = paired_rows(images[:SHOWN], sample_maps[:SHOWN], 8, 2, zoom=2)
        else:
            grid = imgs.make_grid(imgs.upscale(images[:SHOWN], 2), nrow=8)
        stats["samples"] = int(len(images))
        panels.append(imgs.label_image(grid, f"generated ({len(images)} sampled, first {min(SHOWN, len(images))})"))
    if maps is not None:
        grid = paired_rows(imgs.to_uint8(shown), maps, 8, 2, zoom=2)
        panels.append(imgs.label_image(grid, f"held-out real ({len(shown)} of {len(heldout)}, spread over the split)"))
    side = []
    if panels:
        imgs.save_png(imgs.vstack(panels, gap=12), fig_dir / "samples_vs_heldout.png")
        side.append(
            Figure(
                fig_dir / "samples_vs_heldout.png",
                "Top: generated emoji (the grain transformer samples a grain map, the content transformer denoises "
                "multi-grained latents for it, the DVAE decodes them), each row followed by its sampled grain map. "
                "Bottom: held-out real emoji, each row followed by the grain map the DVAE's entropy coder assigns.",
            )
        )
    text = "Generated emoji above held-out real ones (never seen in training)."
    if "fine_ratio_samples" in stats and "fine_ratio_data" in stats:
        text += (
            f" Fine regions: {100 * stats['fine_ratio_data']:.0f}% in the held-out images shown, "
            f"{100 * stats['fine_ratio_samples']:.0f}% in the sampled grain maps."
        )
    sections.append(Section("Samples and held-out images", text=html.escape(text) + GRAIN_LEGEND, figures=side))
    if samples is not None:
        train, _, _ = load_images(demo.data, plan.image_size, len(samples["arr_0"]), demo.data_options, True)
        section, swd = swd_section(samples["arr_0"], heldout, train, seed=demo.seed)
        stats.update(swd)
        sections.append(section)
    if figures:
        sections.append(Section("DVAE reconstructions of held-out images", figures=figures))
    if provenance:
        sections.append(Section("Data and licence", html=attribution_html(provenance)))
    return sections


def report_sections(demo) -> list:
    """Collect figures, curves and settings of a demo run; measured numbers go to `demo.results`."""

    out = demo.out
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    record = None
    if (demo.system_dir / systems.RECORD_FILE).is_file():
        record, _ = systems.read_record(demo.system_dir)
        sections.append(system_section(demo, record))
    trained_vae = record is not None and (demo.cache_dir / "manifest.json").is_file()  # encode ran: DVAE trained
    if demo.heldout is None:
        sections += synthetic_sections(demo, fig_dir, trained_vae)
    elif trained_vae or (demo.samples_dir / NPZ_NAME).is_file():
        sections += heldout_sections(demo, fig_dir, trained_vae)
    runs = {n: demo.system_dir / "runs" / n for n in ("dvae", "grain", "content")}
    curves, finals = loss_figures({f"train {k}": v for k, v in runs.items()}, fig_dir)
    if curves:
        sections.append(
            Section("Training", figures=curves, tables=[(["run", "steps", "final loss", "other final values"], finals)])
        )
    previews = sorted((runs["grain"] / "samples").glob("*.png")) if runs["grain"].is_dir() else []
    if previews:
        what = " per class" if demo.plan.num_classes > 1 else ""
        sections.append(
            Section(
                "Grain transformer preview",
                figures=[
                    Figure(previews[-1], f"Grain maps the trained grain transformer samples{what} (training preview).")
                ],
            )
        )
    links = [
        ("system (d2it.json + safetensors)", demo.system_dir),
        ("samples (PNGs, grid, samples.npz)", demo.samples_dir),
        ("latent cache", demo.cache_dir),
    ]
    links = [(t, p) for t, p in links if p.exists()]
    links += [("timings.json", out / "timings.json"), ("results.json", out / "results.json")]  # written last
    items = "".join(f'<li><a href="{html.escape(_rel(p, out))}">{html.escape(t)}</a></li>' for t, p in links)
    sections.append(Section("Files", html=f"<ul>{items}</ul>"))
    return sections


OPENMOJI_INTRO = (
    ' The images are emoji from <a href="https://openmoji.org">OpenMoji</a> (CC BY-SA 4.0), rendered at 64 px; '
    "every 10th emoji is held out, and the samples are measured against those."
)


def write_report(demo, sections, failed: bool = False) -> Path:
    """Write DEMO_OUT/index.html from `sections` and the demo's timings."""
    status = "<p class='failed'>A step failed; the report shows what was produced before it.</p>" if failed else ""
    data = "the built-in <code>synthetic</code> dataset" if demo.heldout is None else "real emoji"
    intro = (
        f"A tiny end-to-end run of D&sup2;iT on {data}: a Dynamic VAE codes "
        "each 16&times;16-pixel region coarsely or finely by its entropy, a grain transformer learns the grain "
        "maps, a Dynamic Content Transformer learns the multi-grained latents by diffusion, and sampling runs "
        "them in turn. Everything below was produced by the real <code>d2it</code> commands in the table."
        f"{OPENMOJI_INTRO if demo.heldout is not None else ''}{status}"
    )
    return write_index(demo.out, "d2it demo", intro, demo.timings, sections)


def build_report(demo, failed: bool = False) -> Path:
    """Collect figures, curves and timings of a demo run into DEMO_OUT/index.html."""
    return write_report(demo, report_sections(demo), failed=failed)
