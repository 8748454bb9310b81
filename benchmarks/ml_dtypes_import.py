"""Import time of two ml_dtypes versions, alternating (the reason for the cap in pyproject.toml).

Run: python3 benchmarks/ml_dtypes_import.py DIR_A DIR_B [rounds]
with DIR_A/DIR_B made by ``pip install --no-deps --target DIR ml_dtypes==X``.  Each round
imports numpy, then times ``import ml_dtypes`` in a fresh process for A and for B.
"""

import os
import subprocess
import sys

CODE = ("import numpy, time; t = time.perf_counter(); import ml_dtypes; "
        "print(ml_dtypes.__version__, time.perf_counter() - t)")


def main() -> None:
    dirs = sys.argv[1:3]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for d in dirs:
            out = subprocess.run([sys.executable, "-c", CODE], env=dict(os.environ, PYTHONPATH=d),
                                 capture_output=True, text=True, check=True).stdout.split()
            times.setdefault(out[0], []).append(float(out[1]))
    print(f"python {sys.version.split()[0]}; load average {os.getloadavg()}")
    for version, t in times.items():
        print(f"ml_dtypes {version}: import best {min(t):.3f} s, worst {max(t):.3f} s over {len(t)} processes")


if __name__ == "__main__":
    main()
