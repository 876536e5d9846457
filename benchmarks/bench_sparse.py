"""Sparse vs dense RefineNet on the CPU: time against the fine ratio, and padded vs block-diagonal attention.

The sparse RefineNet (`window16-sparse`) runs on the fine cells only, packed across the batch; the dense
one (`window16`) on every cell. Both have the same weights. Target (issue 7): at fine ratio 0.5 the
sparse RefineNet takes <= 0.65x the dense time (a cut of >= 35%). Timed interleaved with a matmul.
Run: python benchmarks/run.py sparse [--quick]
"""

import argparse

import torch
from common import interleaved, machine, markdown_table, matmul_fn, ms, rate, ratio, save

from d2it.attention import sdpa_attention
from d2it.counting import count
from d2it_transformers.refine import RefineNet
from d2it_transformers.sparse import SparseRefineNet, blockdiag_mask

RATIOS = (0.25, 0.5, 0.75)


def grain_maps(batch: int, grid: int, fine_ratio: float, seed: int = 0) -> torch.Tensor:
    """(B, grid, grid) maps with exactly round(fine_ratio * grid²) fine regions each, at random places."""
    g = torch.Generator().manual_seed(seed)
    n = grid * grid
    maps = torch.zeros(batch, n, dtype=torch.long)
    for row in maps:
        row[torch.randperm(n, generator=g)[: round(fine_ratio * n)]] = 1
    return maps.view(batch, grid, grid)


def run(quick: bool) -> dict:
    """Measure, print the Markdown table and write the JSON; `quick` is a smoke run of well under 30 s."""
    size, batch, repeats = (16, 2, 3) if quick else (32, 4, 7)
    width, heads, depth = (192, 3, 1) if quick else (768, 12, 2)
    kwargs = dict(input_size=size, in_channels=4, out_channels=8, region=2, hidden_size=width, num_heads=heads,
                  depth=depth, window=16)  # fmt: skip
    torch.manual_seed(0)
    dense = RefineNet(**kwargs).eval()
    sparse = SparseRefineNet(**kwargs).eval()
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(batch, 4, size, size)
    tokens, c = torch.randn(batch, (size // 2) ** 2, width), torch.randn(batch, width)
    maps = {r: grain_maps(batch, size // 2, r) for r in RATIOS}
    mm, mm_macs = matmul_fn(512 if quick else 2048)

    def fwd(model, *extra):
        with torch.no_grad():
            model(x, tokens, c, *extra)

    def fwd_bwd(model, *extra):
        model.zero_grad(set_to_none=True)
        model(x, tokens, c, *extra).square().sum().backward()

    calls = {"matmul": mm, "dense forward": lambda: fwd(dense), "dense forward+backward": lambda: fwd_bwd(dense)}
    for r in RATIOS:
        calls[f"sparse {r} forward"] = lambda r=r: fwd(sparse, maps[r])
        calls[f"sparse {r} forward+backward"] = lambda r=r: fwd_bwd(sparse, maps[r])
    times = interleaved(calls, repeats=repeats)
    dense_gmacs = count(dense, x, tokens, c).macs / 1e9
    rows = {}
    for r in RATIOS:
        gmacs = count(sparse, x, tokens, c, maps[r]).macs / 1e9
        rows[str(r)] = {"gmacs": gmacs, "gmac_ratio": gmacs / dense_gmacs}
        for mode in ("forward", "forward+backward"):
            t = times[f"sparse {r} {mode}"]
            rows[str(r)][mode] = {**t, "time_ratio_vs_dense": ratio(t, times[f"dense {mode}"])}
    result = {
        "setup": machine(
            dtype="float32",
            batch=batch,
            latent=[4, size, size],
            width=width,
            heads=heads,
            refine_depth=depth,
            window=16,
            repeats=repeats,
            quick=quick,
        ),  # fmt: skip
        "matmul": {**times["matmul"], "gmacs_per_s": rate(times["matmul"], mm_macs) / 1e9},
        "dense": {"gmacs": dense_gmacs, **{m: times[f"dense {m}"] for m in ("forward", "forward+backward")}},
        "sparse": rows,
        "attention": attention_variants(sparse, maps[0.5], width, heads, repeats),
    }
    half = rows["0.5"]
    result["targets"] = {
        "sparse/dense RefineNet time at fine ratio 0.5 <= 0.65 (forward median; min)": [
            half["forward"]["time_ratio_vs_dense"]["median"],
            half["forward"]["time_ratio_vs_dense"]["min"],
        ],
        "same, forward+backward (median; min)": [
            half["forward+backward"]["time_ratio_vs_dense"]["median"],
            half["forward+backward"]["time_ratio_vs_dense"]["min"],
        ],
    }
    save("sparse", result, markdown(result), quick)
    return result


def attention_variants(model: SparseRefineNet, grain_map, width: int, heads: int, repeats: int) -> dict:
    """The CPU choice: windows padded to the longest with a key mask vs one SDPA over all packed tokens."""
    from d2it_transformers.sparse import packed_attention

    layout = model.layout(grain_map)
    n = sum(layout.seqlens)
    qkv = torch.randn(n, 3, heads, width // heads)
    mask = blockdiag_mask(layout.seqlens)
    q, k, v = qkv.permute(1, 2, 0, 3)[:, None].unbind(0)
    with torch.no_grad():
        times = interleaved(
            {
                "padded windows + key mask": lambda: packed_attention(sdpa_attention, qkv, layout),
                "block-diagonal mask over packed tokens": lambda: sdpa_attention(q, k, v, mask),
            },
            repeats=repeats,
        )
    return {"tokens": n, "windows": len(layout.seqlens), "longest": layout.max_len, **times}


def markdown(result: dict) -> str:
    """The result as Markdown tables."""
    s, dense = result["setup"], result["dense"]
    head = (
        f"CPU fp32, {s['threads']} threads, RefineNet width {s['width']}, depth {s['refine_depth']}, window "
        f"{s['window']}, batch {s['batch']}, latent {'x'.join(map(str, s['latent']))}, {s['repeats']} interleaved "
        f"repeats; matmul {result['matmul']['gmacs_per_s']:.1f} GMAC/s. Dense: {dense['gmacs']:.2f} GMACs, forward "
        f"{ms(dense['forward'])} ms, forward+backward {ms(dense['forward+backward'])} ms"
    )
    rows = []
    for r, row in result["sparse"].items():
        for mode in ("forward", "forward+backward"):
            t = row[mode]
            rows.append([r, mode, f"{row['gmacs']:.2f}", ms(t),
                         f"{t['time_ratio_vs_dense']['median']:.3f}; {t['time_ratio_vs_dense']['min']:.3f}",
                         f"{row['gmac_ratio']:.3f}"])  # fmt: skip
    table = markdown_table(["fine ratio", "mode", "GMACs", "sparse ms median (min–max)",
                            "time / dense (median; min)", "GMACs / dense"], rows)  # fmt: skip
    a = result["attention"]
    att = markdown_table(
        ["attention at fine ratio 0.5", "ms median (min–max)"],
        [[k, ms(a[k])] for k in ("padded windows + key mask", "block-diagonal mask over packed tokens")],
    )
    att_head = f"{a['tokens']} packed tokens in {a['windows']} windows (longest {a['longest']}), one layer"
    targets = "\n".join(f"- {k}: {v}" for k, v in result["targets"].items())
    return f"{head}\n\n{table}\n\n{att_head}\n\n{att}\n\nTargets:\n{targets}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 30 s)")
    run(parser.parse_args().quick)
