"""Time `import compsearch` beyond `import torch` in fresh processes; prints JSON.

Target (issue 2): < 2 s beyond torch.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

PROBE = (
    "import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); "
    "import compsearch; t2 = time.perf_counter(); print(t1 - t0, t2 - t1)"
)


def main(repeats: int = 5) -> dict[str, float]:
    torch_s, extra_s = [], []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
        a, b = map(float, out.stdout.split())
        torch_s.append(a)
        extra_s.append(b)
    return {
        "repeats": repeats,
        "import_torch_s_median": statistics.median(torch_s),
        "import_compsearch_beyond_torch_s_median": statistics.median(extra_s),
        "target_s": 2.0,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
