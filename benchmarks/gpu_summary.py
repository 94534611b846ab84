"""The GPU check's summary: each stage's outcome, the tests' tallies and failures, and every target
of the README's "Targets" table against the bench rows measured (met, missed by how much, or not
measured). Also writes the rows' CSV and the plot.

    python benchmarks/gpu_summary.py --rows OUT/bench.json --readme README.md \\
        [--stages stages.tsv] [--pytest OUT/pytest.txt] [--csv OUT/bench.csv] [--plot OUT/bench.png] \\
        [--out OUT/summary.txt]

--stages: one line per stage, tab-separated: name, exit status, seconds, time limit (the GPU check
writes it; 124 or 137 is a stage cut at its limit, "skipped" one that had no time left).
Exit status 0 whatever the figures say; 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# SE-ResNet-50's SE placements (C, H, W, hidden), as fused-se-bench's seresnet50 preset
SERESNET50 = [(256, 56, 56, 16), (512, 28, 28, 32), (1024, 14, 14, 64), (2048, 7, 7, 128)]


@dataclass(frozen=True)
class Target:
    """How one README target is measured: the rows it reads and the figure it compares."""

    what: str
    batch: int
    modes: tuple[str, ...]
    figure: Callable[[dict, dict], Optional[float]]  # (fused row, rows of its case by provider) -> figure
    unit: str  # "x" or "%"


def _ratio(base: str) -> Callable[[dict, dict], Optional[float]]:
    def figure(fused: dict, case: dict) -> Optional[float]:
        other = case.get(base)
        return None if other is None else other["median_ms"] / fused["median_ms"]

    return figure


def _pct_of_copy(fused: dict, case: dict) -> Optional[float]:
    return fused.get("pct_of_copy")


# The ids of the README's Targets table, and how each is measured: the fused provider on
# SE-ResNet-50's SE shapes in bf16, channels_last, without the residual tail.
TARGETS = {
    "fwd+bwd-vs-eager": Target("fused fwd+bwd against eager, B=128", 128, ("fwd+bwd",), _ratio("eager"), "x"),
    "fwd+bwd-vs-compile": Target(
        "fused fwd+bwd against torch.compile, B=128", 128, ("fwd+bwd",), _ratio("compile"), "x"
    ),
    "bandwidth": Target(
        "fused GB/s against the minimal traffic, % of a device copy, B=128", 128, ("fwd", "fwd+bwd"), _pct_of_copy, "%"
    ),
    "batch1-inference": Target("fused inference against eager, B=1", 1, ("fwd",), _ratio("eager"), "x"),
}


def read_targets(readme: str) -> dict[str, float]:
    """The README's Targets table: `| `id` | what | at least |` rows, at least as 2.5x or 75%."""
    found = {}
    for line in readme.splitlines():
        m = re.match(r"^\|\s*`([\w+.-]+)`\s*\|.*\|\s*([\d.]+)\s*(x|%)\s*\|\s*$", line)
        if m:
            found[m.group(1)] = float(m.group(2))
    return found


def _is_gpu(row: dict) -> bool:
    return not str(row.get("device", "cpu")).startswith("cpu")


def _cases(rows: list[dict], target: Target) -> dict[tuple, dict[str, dict]]:
    """SE-block rows of the target's slice, by (run, shape, mode) and then provider; within each
    case the first row measured for a provider."""
    cases: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if "provider" not in r or r.get("tail") or not _is_gpu(r):
            continue
        shape = (r["C"], r["H"], r["W"], r["hidden"])
        if shape not in SERESNET50 or r["batch"] != target.batch or r["mode"] not in target.modes:
            continue
        if r["dtype"] != "bf16" or r["layout"] != "channels_last":
            continue
        cases.setdefault((r.get("run"), shape, r["mode"]), {}).setdefault(r["provider"], r)
    return cases


def evaluate(rows: list[dict], key: str, least: float) -> tuple[str, list[str]]:
    """(status, detail lines) of one target: "met", "missed" or "not measured"."""
    target = TARGETS[key]
    figures: dict[tuple, tuple[float, bool]] = {}  # (shape, mode) -> (figure, noisy), from the first run with both
    for (_, shape, mode), case in _cases(rows, target).items():
        fused = case.get("fused")
        if fused is None or (shape, mode) in figures:
            continue
        value = target.figure(fused, case)
        if value is not None:
            noisy = bool(fused.get("noisy")) or any(o.get("noisy") for p, o in case.items() if p != "fused")
            figures[(shape, mode)] = (value, noisy)
    wanted = [(s, m) for s in SERESNET50 for m in target.modes]
    if not figures:
        return "not measured", [f"no rows for it ({target.what}; bf16, channels_last, SE-ResNet-50's shapes)"]
    lines, short = [], []
    for s, m in wanted:
        label = f"{s[0]}x{s[1]}x{s[2]},{s[3]} {m}"
        if (s, m) not in figures:
            lines.append(f"{label:28s} not measured")
            continue
        value, noisy = figures[(s, m)]
        ok = value >= least
        if not ok:
            short.append((value / least, label, value))
        mark = "met" if ok else f"missed by {100 * (1 - value / least):.0f}%"
        lines.append(f"{label:28s} {value:8.2f}{target.unit}  {mark}{'  (noisy)' if noisy else ''}")
    measured = sum(1 for w in wanted if w in figures)
    if short:
        worst = min(short)
        status = (
            f"missed on {len(short)} of {measured} measured: worst {worst[2]:.2f}{target.unit} at {worst[1]}, "
            f"{100 * (1 - worst[0]):.0f}% short"
        )
    else:
        status = "met" if measured == len(wanted) else f"met on the {measured} of {len(wanted)} measured"
    return status, lines


def read_stages(path: Optional[str]) -> list[str]:
    if not path or not Path(path).exists():
        return []
    lines = []
    for raw in Path(path).read_text().splitlines():
        parts = raw.split("\t")
        if len(parts) < 4:
            continue
        name, rc, seconds, limit = parts[:4]
        if rc == "skipped":
            outcome = "skipped: no time left"
        elif rc == "0":
            outcome = "ok"
        elif rc in ("124", "137"):
            outcome = f"cut at its limit of {limit} s"
        else:
            outcome = f"failed (exit status {rc})"
        lines.append(f"{name:38s} {outcome:34s} {seconds:>5s} s")
    return lines


def read_pytest(path: Optional[str]) -> list[str]:
    """Each pytest run's closing tally, every failed or erroring test, and any test that hit its
    time limit (pytest-timeout's banner; the test last started before it)."""
    if not path or not Path(path).exists():
        return []
    lines, last_test = [], None
    for raw in Path(path).read_text(errors="replace").splitlines():
        if raw.startswith("== stage"):
            lines.append(raw.strip("= ").strip())
        elif re.match(r"^=+ .*\b(passed|failed|errors?|skipped|deselected|no tests ran)\b.* =+$", raw):
            lines.append("  " + raw.strip("= "))
        elif raw.startswith(("FAILED ", "ERROR ")):
            lines.append("  " + raw)
        elif re.match(r"^\++ Timeout \++$", raw.strip()):
            lines.append(f"  TIMEOUT {last_test or '(a test)'}: hit the per-test time limit")
        if "::" in raw:
            last_test = raw.split()[0] if raw.split()[0].count("::") else raw.split()[-1]
    return lines


def summarize(rows: list[dict], targets: dict[str, float], stages: list[str], tests: list[str]) -> str:
    out = ["fused_se GPU check: summary"]
    env = next((r for r in rows if _is_gpu(r)), rows[0] if rows else {})
    if env:
        out.append(
            f"device {env.get('device')} | torch {env.get('torch')} | triton {env.get('triton')} | "
            f"fused_se {env.get('fused_se')}"
        )
    if stages:
        out += ["", "stages:", *("  " + s for s in stages)]
    if tests:
        out += ["", "tests:", *tests]
    runs: dict[str, int] = {}
    for r in rows:
        runs[str(r.get("run"))] = runs.get(str(r.get("run")), 0) + 1
    out += ["", f"bench rows: {len(rows)}" + (f" ({', '.join(f'{k} {v}' for k, v in runs.items())})" if runs else "")]
    if rows and not any(_is_gpu(r) for r in rows):
        out.append("  (every row is from a CPU: no GPU target can be measured from them)")
    out += ["", "targets (README, Benchmarks > Targets):"]
    if not targets:
        out.append("  none found in the README")
    for key, least in targets.items():
        if key not in TARGETS:
            out.append(f"  {key}: unknown to gpu_summary.py; not evaluated")
            continue
        unit = TARGETS[key].unit
        status, detail = evaluate(rows, key, least)
        out.append(f"  {key} (at least {least:g}{unit}; {TARGETS[key].what}): {status}")
        out += ["      " + d for d in detail]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", required=True, help="the bench rows (JSON list; a missing file means no rows)")
    p.add_argument("--readme", required=True, help="the README holding the Targets table")
    p.add_argument("--stages", help="the stages' outcomes (TSV: name, exit status, seconds, limit)")
    p.add_argument("--pytest", help="the pytest report (text)")
    p.add_argument("--csv", help="write the rows as CSV here")
    p.add_argument("--plot", help="write the plot of the SE-block rows here (needs matplotlib)")
    p.add_argument("--out", help="write the summary here too")
    args = p.parse_args(argv)
    try:
        rows = json.loads(Path(args.rows).read_text()) if Path(args.rows).exists() else []
        readme = Path(args.readme).read_text()
    except (OSError, ValueError) as e:
        print(f"gpu_summary: {e}", file=sys.stderr)
        return 2
    text = summarize(rows, read_targets(readme), read_stages(args.stages), read_pytest(args.pytest))
    notes = []
    if args.csv and rows:
        from fused_se.bench import write_csv

        write_csv(rows, args.csv)
    if args.plot:
        se_rows = [r for r in rows if "provider" in r]
        try:
            from fused_se.bench import write_plot

            if se_rows:
                write_plot(se_rows, args.plot)
            else:
                notes.append("no plot: no SE-block rows")
        except ImportError as e:
            notes.append(f"no plot: {e}")
    text += "".join(f"{n}\n" for n in notes)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
