"""A/B timing of fit_batch (benchmark (a) of bench_batch.py) between two source trees.

Run: python3 benchmarks/ab_batch.py SRC_A SRC_B [--reps 5] [--R 10000] [--out DIR]
                                     [--xla-flags-a FLAGS] [--xla-flags-b FLAGS]

(the same tree twice with different ``--xla-flags-*`` compares XLA compiler settings)

Each tree runs in its own long-lived child process (``PYTHONPATH=SRC``), warmed up once;
the parent then asks them for one warm call at a time, alternately, so that both see the
same machine load.  Prints wall and process-CPU seconds per call (best and median), the
stage profile of one more warm call, and the logLik difference (B - A) over all replicates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child(R: int, out_dir: str, tag: str) -> None:
    sys.path.insert(0, HERE)
    from bench_batch import SEED_FORMULA, restoration_replicates, stage_profile

    import drmpy as drm

    _, big = restoration_replicates(R)
    f = drm.Formula(*SEED_FORMULA)
    t = time.perf_counter()
    res = drm.fit_batch(f, big, by="replicate", progress=False)
    first = time.perf_counter() - t
    per = res.groupby("replicate").first()
    per[["loglik", "converged"]].to_csv(os.path.join(out_dir, f"loglik-{tag}.csv"))
    res.to_pickle(os.path.join(out_dir, f"res-{tag}.pkl"))
    print(json.dumps({"first": first, "file": drm.__file__}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            c = time.process_time()
            t = time.perf_counter()
            drm.fit_batch(f, big, by="replicate", progress=False)
            print(json.dumps({"wall": time.perf_counter() - t, "cpu": time.process_time() - c}), flush=True)
        elif cmd == "profile":
            print(json.dumps(stage_profile(lambda: drm.fit_batch(f, big, by="replicate", progress=False))), flush=True)
        else:
            return


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", nargs=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--R", type=int, default=10_000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--xla-flags-a", default=None, help="XLA_FLAGS of child A (default: inherited)")
    ap.add_argument("--xla-flags-b", default=None, help="XLA_FLAGS of child B (default: inherited)")
    args = ap.parse_args()
    import numpy as np
    import pandas as pd

    out_dir = args.out or tempfile.mkdtemp(prefix="drmpy-ab-")
    os.makedirs(out_dir, exist_ok=True)
    print(f"load average {os.getloadavg()}", flush=True)
    kids = {}
    for tag, src, flags in zip("AB", args.src, (args.xla_flags_a, args.xla_flags_b)):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
        if flags is not None:
            env["XLA_FLAGS"] = flags
        kids[tag] = subprocess.Popen([sys.executable, __file__, "--child", tag, "--R", str(args.R), "--out", out_dir],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    for tag, p in kids.items():
        info = json.loads(p.stdout.readline())
        flags = (args.xla_flags_a, args.xla_flags_b)['AB'.index(tag)]
        print(f"{tag} {args.src['AB'.index(tag)]}: {info['file']}; XLA_FLAGS {flags!r}; first call {info['first']:.2f} s",
              flush=True)
    times = {t: [] for t in kids}
    for _ in range(args.reps):
        for tag, p in kids.items():
            p.stdin.write("run\n")
            p.stdin.flush()
            times[tag].append(json.loads(p.stdout.readline()))
    for tag, p in kids.items():
        w = [x["wall"] for x in times[tag]]
        c = [x["cpu"] for x in times[tag]]
        print(f"{tag}: wall best {min(w):.3f} s median {np.median(w):.3f} s -> {args.R / min(w):,.0f} fits/s; "
              f"CPU best {min(c):.3f} s median {np.median(c):.3f} s", flush=True)
    for tag, p in kids.items():
        p.stdin.write("profile\n")
        p.stdin.flush()
        st = json.loads(p.stdout.readline())
        print(f"{tag} profile: " + ", ".join(f"{k} {v:.3f}" for k, v in st.items()), flush=True)
        p.stdin.write("quit\n")
        p.stdin.flush()
        p.wait()
    a = pd.read_csv(os.path.join(out_dir, "loglik-A.csv"), index_col=0)
    b = pd.read_csv(os.path.join(out_dir, "loglik-B.csv"), index_col=0)
    d = b["loglik"] - a["loglik"]
    print(f"logLik B - A over {len(d)} replicates: min {d.min():.3g}, max {d.max():.3g}, "
          f"max |diff| {d.abs().max():.3g}; converged A {int(a['converged'].sum())}, B {int(b['converged'].sum())}")
    print(f"load average {os.getloadavg()}; files in {out_dir}")


if __name__ == "__main__":
    if "--child" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--child")
        ap.add_argument("--R", type=int)
        ap.add_argument("--out")
        a = ap.parse_args()
        child(a.R, a.out, a.child)
    else:
        main()
