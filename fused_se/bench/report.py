"""The rows' outputs: the printed tables, JSON, CSV and the plot."""

from __future__ import annotations

import csv
import json

ROW_FIELDS = [
    "device", "torch", "triton", "fused_se", "timestamp", "provider", "path", "batch", "C", "H", "W", "hidden",
    "act", "gate", "dtype", "layout", "mode", "tail", "median_ms", "p20_ms", "p80_ms", "speedup_vs_eager",
    "speedup_vs_compile", "x_bytes", "min_traffic_bytes", "own_traffic_bytes", "gbs_min_traffic",
    "gbs_own_traffic", "copy_gbs", "pct_of_copy", "peak_mem_mb", "launches",
]  # fmt: skip


def _fmt(v, spec: str, width: int, suffix: str = "") -> str:
    return ("-" if v is None else format(v, spec) + suffix).rjust(width)


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'shape':>13} {'layout':>13} {'mode':>12} {'provider':>23} {'path':>24} {'ms':>9} {'p20-p80':>17} "
        f"{'vs eager':>8} {'vs comp':>8} {'GB/s':>7} {'%copy':>6} {'own GB/s':>8} {'peak MB':>8} {'launch':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r['batch']}x{r['C']}x{r['H']}x{r['W']}"
        mode = r["mode"] + ("+tail" if r.get("tail") else "")
        lines.append(
            f"{shape:>13} {r['layout']:>13} {mode:>12} {r['provider']:>23} {r['path']:>24} {r['median_ms']:>9.4f} "
            + f"{r['p20_ms']:>8.4f}-{r['p80_ms']:<8.4f} {_fmt(r['speedup_vs_eager'], '.2f', 8, 'x')} "
            + f"{_fmt(r['speedup_vs_compile'], '.2f', 8, 'x')} {r['gbs_min_traffic']:>7.1f} {r['pct_of_copy']:>5.1f}% "
            + f"{_fmt(r['gbs_own_traffic'], '.1f', 8)} {_fmt(r['peak_mem_mb'], '.1f', 8)} {_fmt(r['launches'], 'd', 6)}"
        )
    return "\n".join(lines)


def write_json(rows: list[dict], path: str) -> None:
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mode = "fwd+bwd" if any(r["mode"] == "fwd+bwd" for r in rows) else rows[0]["mode"]
    layout = "channels_last" if any(r["layout"] == "channels_last" for r in rows) else rows[0]["layout"]
    sel = [r for r in rows if r["mode"] == mode and r["layout"] == layout]
    shapes = list(dict.fromkeys(f"{r['C']}x{r['H']}x{r['W']}" for r in sel))
    providers = list(dict.fromkeys(r["provider"] for r in sel))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(providers)
    for i, p in enumerate(providers):
        by_shape = {f"{r['C']}x{r['H']}x{r['W']}": r for r in sel if r["provider"] == p}
        xs = [j + i * width for j in range(len(shapes))]
        ax1.bar(xs, [by_shape[s]["speedup_vs_eager"] or 0 for s in shapes], width, label=p)
        ax2.bar(xs, [by_shape[s]["pct_of_copy"] for s in shapes], width, label=p)
    for ax, title in ((ax1, "speedup against eager"), (ax2, "bandwidth, % of device copy (minimal traffic)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=20)
        ax.set_title(f"{title}\n{mode}, {layout}, {sel[0]['dtype']}, batch {sel[0]['batch']}", fontsize=10)
        ax.legend(fontsize=8)
    ax1.axhline(1.0, color="gray", lw=0.8)
    fig.suptitle(f"fused_se {sel[0]['fused_se']} on {sel[0]['device']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_e2e(rows: list[dict]) -> str:
    head = (
        f"{'model':>16} {'variant':>15} {'ms/step':>9} {'p20-p80':>17} {'images/s':>9} {'SE overhead vs resnet50':>24}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        over = "-" if r["overhead_vs_resnet50_pct"] is None else f"{r['overhead_vs_resnet50_pct']:+.1f}%"
        lines.append(
            f"{r['model']:>16} {r['variant']:>15} {r['median_ms']:>9.2f} {r['p20_ms']:>8.2f}-{r['p80_ms']:<8.2f} "
            f"{r['images_per_s']:>9.1f} {over:>24}"
        )
    return "\n".join(lines)
