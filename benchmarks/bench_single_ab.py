"""Warm single-fit times of two source trees, alternating in one run (issue 15, target 4).

Run: python3 benchmarks/bench_single_ab.py BEFORE_SRC AFTER_SRC [rounds]
(e.g. ``/work/main/src src``).  Each round starts one fresh process per tree (in turn), which
fits the model of ``bench_single.py`` (n = 1e6, ``yi ~ x + meta_V(V=vi)``, ``sigma ~ x2``)
once per method and then times 5 warm calls on the same data: best wall time, the process
CPU time of that call (all threads) and the least CPU time of the 5.  On a shared machine
compare the two trees within a round, and CPU beside wall.
"""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = """
import os, sys
sys.path.insert(0, {here!r})
import numpy as np
import drmpy as drm
from bench_single import simulate, warm_calls
d = simulate()
for method in ("ML", "REML"):
    fit, walls, cpus = warm_calls(drm, d, method)
    i = int(np.argmin(walls))
    print(f"{{method:4s}} warm best {{walls[i]:.3f}} s (CPU {{cpus[i]:.3f}} s; least CPU {{min(cpus):.3f}} s); "
          f"{{fit.evaluations}} full-data Newton evaluations; logLik {{fit.loglik:.8f}}; "
          f"load {{os.getloadavg()[0]:.2f}}")
"""


def main() -> None:
    before, after = (os.path.abspath(p) for p in sys.argv[1:3])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    here = os.path.dirname(os.path.abspath(__file__))
    print(f"python {sys.version.split()[0]}; cores {os.cpu_count()}; load average {os.getloadavg()}")
    print(f"before: {before}\nafter:  {after}")
    for r in range(rounds):
        for label, src in (("before", before), ("after", after)):
            env = dict(os.environ, PYTHONPATH=src)
            out = subprocess.run([sys.executable, "-c", CHILD.format(here=here)], check=True,
                                 capture_output=True, text=True, env=env)
            for line in out.stdout.strip().splitlines():
                print(f"round {r + 1} {label:6s} {line}")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
