"""The rows' outputs: the printed tables (a line per row as it is measured), the JSON and CSV files
(rewritten whole after each row, so that they hold every row measured so far and stay valid
documents if the run is cut short), and the plot."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, TextIO

from .measure import NOISY_SPREAD

ROW_FIELDS = [
    "device", "torch", "triton", "fused_se", "timestamp", "run", "provider", "path", "batch", "C", "H", "W", "spatial",
    "hidden", "act", "gate", "dtype", "layout", "mode", "tail", "median_ms", "p20_ms", "p80_ms", "spread", "noisy",
    "speedup_vs_eager", "speedup_vs_compile", "x_bytes", "min_traffic_bytes", "own_traffic_bytes",
    "gbs_min_traffic", "gbs_own_traffic", "copy_gbs", "pct_of_copy", "peak_mem_mb", "launches",
]  # fmt: skip
# --e2e rows (fused_se.bench.e2e)
E2E_FIELDS = [
    "model", "variant", "mode", "batch", "size", "wall_ms", "device_ms", "host_ms", "launches", "se_device_ms",
    "se_attribution", "compile_s", "first_step_s", "wall_ms_rounds", "images_per_s", "amp", "layout", "dry_run",
    "card", "torch", "triton", "fused_se", "timestamp", "run", "error", "top_kernels",
]  # fmt: skip


# ---- printed tables --------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    header: str
    width: int
    cell: Callable[[dict], str]
    left: bool = False

    def render(self, text: str) -> str:
        return text.ljust(self.width) if self.left else text.rjust(self.width)


def _num(key: str, spec: str, suffix: str = "") -> Callable[[dict], str]:
    return lambda r: "-" if r.get(key) is None else format(r[key], spec) + suffix


def _ratio(key: str, base_noisy: Callable[[dict], bool]) -> Callable[[dict], str]:
    """A speedup, marked `?` where this row or the one it is against is noisy."""

    def cell(r: dict) -> str:
        if r.get(key) is None:
            return "-"
        return f"{r[key]:.2f}x" + ("?" if r.get("noisy") or base_noisy(r) else " ")

    return cell


# The printed tables' short forms (the JSON and CSV keep the full names).
LAYOUT_SHORT = {"channels_last": "cl", "nchw": "nchw"}
PATH_SHORT = {"three_launch": "3L", "one_launch": "1L", "spread": "spread", "stream": "stream", "scse": "scse"}
PROVIDER_SHORT = {
    "compile-max-autotune": "comp-maxat",
    "fused-3pass": "fused-3L",
    "compile-reduce-overhead": "comp-ro",
    "eager-cudagraph": "eager-cg",
    "fused-cudagraph": "fused-cg",
}
PATH_LEGEND = (
    "lay cl: channels_last; +t: with the residual tail; comp-maxat, comp-ro: torch.compile's max-autotune"
    "-no-cudagraphs and reduce-overhead modes; fused-3L: fused-3pass; -cg: CUDA-graph replays; path: the fused kernels' paths, "
    "fwd/bwd where they differ (3L three launches, 1L one launch, spread, stream), or cpu (the CPU "
    "kernel), ref (the reference), torch (eager's ops)"
)


def provider_short(r: dict) -> str:
    return PROVIDER_SHORT.get(r["provider"], r["provider"])


def mode_short(r: dict) -> str:
    return r["mode"] + ("+t" if r.get("tail") else "")


def layout_short(r: dict) -> str:
    return LAYOUT_SHORT.get(r["layout"], r["layout"])


def path_short(r: dict) -> str:
    """A row's path in a few characters: "3L", "1L/3L", "stream", "cpu", "torch" (the row's "path"
    field in full: "triton one_launch fwd, three_launch bwd (cuda)")."""
    path = r["path"].rsplit(" (", 1)[0]
    if not path.startswith("triton "):
        return {"decomposed": "cpu", "reference": "ref"}.get(path, path)
    names = [word for word in path[len("triton ") :].replace(",", " ").split() if word not in ("fwd", "bwd")]
    return "/".join(PATH_SHORT.get(n, n) for n in names)


def shape_label(r: dict) -> str:
    """N x C x the map's dims and the hidden width: 8x256x56x56,16 (8x1024x300,128 for a sequence)."""
    spatial = r.get("spatial") or f"{r['H']}x{r['W']}"
    return f"{r['batch']}x{r['C']}x{spatial},{r['hidden']}"


class Table:
    """A fixed-width table printed a line at a time: `header()` once, then `line(row)` per row
    (`seen`: the rows printed so far, which a cell may look back at)."""

    def __init__(self, columns: list[Column]) -> None:
        self.columns = columns
        self.seen: list[dict] = []

    def header(self) -> str:
        head = " ".join(c.render(c.header) for c in self.columns).rstrip()
        return head + "\n" + "-" * len(head)

    def line(self, row: dict) -> str:
        self.seen.append(row)
        return " ".join(c.render(c.cell(row)) for c in self.columns).rstrip()


def se_table(*, gpu: bool, providers: list[str]) -> Table:
    """The SE-block table. Every device: shape (with the hidden width), layout, mode, provider, median
    ms, the p20-p80 spread (`!` past NOISY_SPREAD of the median), the speedup against eager (`?`
    where either row is noisy), GB/s against the minimal traffic and the path. Against
    torch.compile where it is timed; on a GPU also % of the copy's bandwidth, GB/s against the
    fused kernels' own traffic, peak memory and kernel launches (on a CPU these say nothing, or are
    not measured)."""
    table = Table([])

    def base_noisy(key: str) -> Callable[[dict], bool]:
        def noisy(r: dict) -> bool:
            return any(o.get("noisy") and o["provider"] == key and _same_case(o, r) for o in table.seen)

        return noisy

    width = max(8, *(len(PROVIDER_SHORT.get(p, p)) for p in providers))
    cols = [
        Column("shape,hidden", 16, shape_label),
        Column("lay", 4, layout_short),
        Column("mode", 9, mode_short),
        Column("provider", width, provider_short),
        Column("ms", 8, _num("median_ms", ".4f")),
        Column("sprd", 5, lambda r: f"{100 * r['spread']:.0f}%" + ("!" if r["noisy"] else " ")),
        Column("vs eager", 8, _ratio("speedup_vs_eager", base_noisy("eager"))),
    ]
    if "compile" in providers:
        cols.append(Column("vs comp", 7, _ratio("speedup_vs_compile", base_noisy("compile"))))
    cols.append(Column("GB/s", 6, _num("gbs_min_traffic", ".1f")))
    if gpu:
        cols.append(Column("%copy", 5, _num("pct_of_copy", ".0f", "%")))
    cols.append(Column("path", 0, path_short, left=True))
    table.columns = cols
    return table


def device_table() -> Table:
    """A GPU run's second table: each row's kernel launches, bandwidth against the fused kernels' own
    traffic and peak memory (the first table holds the rest)."""
    return Table(
        [
            Column("shape,hidden", 16, shape_label),
            Column("lay", 4, layout_short),
            Column("mode", 9, mode_short),
            Column("provider", 10, provider_short),
            Column("launches", 8, _num("launches", "d")),
            Column("own GB/s", 8, _num("gbs_own_traffic", ".1f")),
            Column("peak MB", 8, _num("peak_mem_mb", ".1f")),
        ]
    )


def _same_case(a: dict, b: dict) -> bool:
    keys = ("batch", "C", "H", "W", "spatial", "hidden", "layout", "mode", "tail", "run")
    return all(a.get(k) == b.get(k) for k in keys)


def format_table(rows: list[dict], gpu: Optional[bool] = None) -> str:
    """The whole SE-block table at once (the run prints it a line at a time)."""
    gpu = any(r["device"].split()[0] != "cpu" for r in rows) if gpu is None else gpu
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    table = se_table(gpu=gpu, providers=providers)
    lines = [table.header(), *(table.line(r) for r in rows), *noise_note(rows), *legend()]
    if gpu:
        device = device_table()
        lines += ["", device.header(), *(device.line(r) for r in rows)]
    return "\n".join(lines)


def legend() -> list[str]:
    """The short forms' key, in lines of at most 100 columns."""
    return textwrap.wrap(PATH_LEGEND, 100)


def noise_note(rows: list[dict]) -> list[str]:
    if not any(r.get("noisy") for r in rows):
        return []
    return [f"! p20-p80 wider than {100 * NOISY_SPREAD:.0f}% of the median; ? a speedup from such a row (noise)"]


def format_vs_compile(rows: list[dict], max_width: int = 100) -> str:
    """Each case's providers against its torch.compile row (filled in after the compile rows, which
    are timed last): one table, or several side by side in provider groups where one would be
    wider than max_width."""
    compiled = [r for r in rows if r["provider"] == "compile"]
    if not compiled:
        return ""
    cases = [dict(base) for base in compiled]
    for cells, base in zip(cases, compiled, strict=True):
        for r in rows:
            if r["provider"] != "compile" and _same_case(r, base) and r.get("speedup_vs_compile") is not None:
                cells[r["provider"]] = f"{r['speedup_vs_compile']:.2f}x" + ("?" if r["noisy"] or base["noisy"] else "")
    head = [
        Column("against torch.compile", 21, shape_label),
        Column("lay", 4, layout_short),
        Column("mode", 9, mode_short),
    ]
    groups: list[list[Column]] = [[]]
    room = max_width - sum(c.width + 1 for c in head)
    for p in dict.fromkeys(r["provider"] for r in rows if r["provider"] != "compile"):
        short = PROVIDER_SHORT.get(p, p)
        column = Column(short, max(7, len(short)), lambda c, p=p: c.get(p, "-"))
        if groups[-1] and sum(c.width + 1 for c in groups[-1]) + column.width + 1 > room:
            groups.append([])
        groups[-1].append(column)
    tables = []
    for group in groups:
        table = Table(head + group)
        tables.append("\n".join([table.header(), *(table.line(cells) for cells in cases)]))
    return "\n\n".join(tables)


# ---- files -----------------------------------------------------------------------------------


def _replace(path: str, write: Callable[[TextIO], None]) -> None:
    """Write to a temporary file beside path, then rename it over path: path is never half written."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(rows: list[dict], path: str) -> None:
    _replace(path, lambda f: json.dump(rows, f, indent=1))


def write_csv(rows: list[dict], path: str, fields: Optional[list[str]] = None) -> None:
    """CSV of the rows: `fields` (default: ROW_FIELDS, or E2E_FIELDS for --e2e rows) and after
    them any other key the rows hold, in order of appearance."""
    if fields is None:
        fields = E2E_FIELDS if rows and "model" in rows[0] else ROW_FIELDS
    extra = [k for r in rows for k in r if k not in fields]
    fields = fields + list(dict.fromkeys(extra))

    def write(f: TextIO) -> None:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)

    _replace(path, write)


def read_rows(path: str) -> list[dict]:
    """The rows of a JSON file written by write_json (empty if there is none)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return []
    with open(path) as f:
        rows = json.load(f)
    if not isinstance(rows, list):
        raise ValueError(f"{path} holds no list of rows")
    return rows


def _read_csv(path: str) -> tuple[list[str], list[dict]]:
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


class RowWriter:
    """Prints each row as it is measured (flushed) and rewrites the JSON and CSV files with every
    row so far. With append, the rows already in the files are kept ahead of the new ones."""

    def __init__(
        self,
        table: Optional[Table],
        json_path: Optional[str] = None,
        csv_path: Optional[str] = None,
        append: bool = False,
        out: Optional[TextIO] = None,
    ) -> None:
        self.table, self.json_path, self.csv_path = table, json_path, csv_path
        self.out = sys.stdout if out is None else out
        self.rows: list[dict] = []
        self.json_before = read_rows(json_path) if append and json_path else []
        self.csv_fields, self.csv_before = _read_csv(csv_path) if append and csv_path else ([], [])
        if self.table is not None:
            print(self.table.header(), file=self.out, flush=True)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.table is not None:
            print(self.table.line(row), file=self.out, flush=True)
        self.update()

    def update(self) -> None:
        if self.json_path:
            write_json(self.json_before + self.rows, self.json_path)
        if self.csv_path:
            fields = None
            if self.csv_fields:
                new = ROW_FIELDS if "model" not in self.rows[0] else E2E_FIELDS
                fields = self.csv_fields + [k for k in new if k not in self.csv_fields]
            write_csv(self.csv_before + self.rows, self.csv_path, fields)


# ---- the plot --------------------------------------------------------------------------------


def write_plot(rows: list[dict], path: str) -> None:
    """Two panels over the shapes, a bar per provider: the speedup against eager, and the bandwidth
    (as % of the copy's where it was measured, else GB/s), for one slice of the rows: fwd+bwd if
    timed, channels_last if timed, the SE block alone if timed. The titles name the slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "provider" in r]  # the SE-block rows (not --e2e's)
    if not rows:
        raise ValueError("no SE-block rows to plot")
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    layouts = list(dict.fromkeys(r["layout"] for r in rows))
    mode = "fwd+bwd" if "fwd+bwd" in modes else modes[0]
    layout = "channels_last" if "channels_last" in layouts else layouts[0]
    tail = all(r.get("tail") for r in rows)
    sel = [r for r in rows if r["mode"] == mode and r["layout"] == layout and bool(r.get("tail")) == tail]
    shapes = list(dict.fromkeys(shape_label(r) for r in sel))
    providers = list(dict.fromkeys(r["provider"] for r in sel))
    copy = all(r.get("pct_of_copy") is not None for r in sel)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / len(providers)
    for i, p in enumerate(providers):
        by_shape: dict[str, dict] = {}
        for r in sel:  # the first row of each shape (rows of several runs may repeat one)
            if r["provider"] == p:
                by_shape.setdefault(shape_label(r), r)
        xs = [j + i * width for j in range(len(shapes))]
        ax1.bar(xs, [(by_shape[s]["speedup_vs_eager"] or 0) if s in by_shape else 0 for s in shapes], width, label=p)
        key = "pct_of_copy" if copy else "gbs_min_traffic"
        ax2.bar(xs, [(by_shape[s][key] or 0) if s in by_shape else 0 for s in shapes], width, label=p)
    dtypes = ", ".join(dict.fromkeys(r["dtype"] for r in sel))
    what = f"{mode}{' + tail' if tail else ''}, {layout}, {dtypes}"
    others = [m for m in modes if m != mode] + [lay for lay in layouts if lay != layout]
    slice_note = f"(not plotted: {', '.join(others)})" if others else ""
    band = "bandwidth, % of device copy (minimal traffic)" if copy else "GB/s against the minimal traffic"
    for ax, title in ((ax1, "speedup against eager"), (ax2, band)):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=20, fontsize=8)
        ax.set_xlabel("N x C x H x W, hidden", fontsize=9)
        ax.set_title(f"{title}\n{what} {slice_note}", fontsize=9)
        ax.legend(fontsize=8)
    ax1.axhline(1.0, color="gray", lw=0.8)
    fig.suptitle(f"fused_se {sel[0]['fused_se']} on {sel[0]['device']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
