"""The five alternating rounds of host_models_ab.py in one table: per block, the median (and the
range) over the rounds of each round's fused / eager ratio, before and after.

    python summarize.py > host_models_summary.txt
"""

import collections
import glob
import statistics

rounds = collections.defaultdict(lambda: {"before": [], "after": []})
for side in ("before", "after"):
    for path in sorted(glob.glob(f"host_models_{side}_*.txt")):
        with open(path) as f:
            for line in f.read().splitlines()[1:]:
                name, eager, fused, c, eager_us, fused_us, ratio = line.split()
                rounds[(name, eager, fused, c)][side].append(float(ratio.rstrip("x")))
print(
    f"{'model':<16} {'eager block':<18} {'fused as':<22} {'before: median (range)':>24} {'after: median (range)':>24}"
)
for (name, eager, fused, _), sides in rounds.items():
    cells = [f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f}), n={len(r)}" for r in sides.values()]
    print(f"{name:<16} {eager:<18} {fused:<22} {cells[0]:>24} {cells[1]:>24}")
print("fused / eager host time per forward+backward, launches stubbed; each round's ratio from one process,")
print("eager and fused timed in alternating rounds (host_models_ab.py)")
