"""A/B of the structures refactor (issue 24 item 1): fits of every structure, chosen and forced,
dumped to JSON so that two source trees can be compared bit for bit.

    PYTHONPATH=<old>/src python3 benchmarks/ab_structures.py old.json
    PYTHONPATH=<new>/src python3 benchmarks/ab_structures.py new.json
    python3 benchmarks/ab_structures.py --compare old.json new.json

Cases: diag (location-scale), block, crossed, correlated slopes and a dense V, each by the
automatic choice and forced woodbury/dense, ML and REML; leave-one-out tables (the
``intercepts`` deletion path and the dense one); bivariate pair/dense with and without
missing responses; the phylo tree route and its dense-K (woodbury) route.  Compared: theta,
vcov, logLik and iteration counts (fits), every number of the leave-one-out tables.
"""
import sys, json
from pathlib import Path

import numpy as np, pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if sys.argv[1] == "--compare":
    a, b = (json.loads(Path(f).read_text()) for f in sys.argv[2:4])
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k] != b[k]]
    print(f"{len(a)} cases, {len(differ)} differ{': ' + ', '.join(differ) if differ else ''}")
    sys.exit(1 if differ else 0)
sys.path.insert(0, str(ROOT / "tests" / "engine"))
import drmpy as drm  # noqa: E402
from test_bivariate import _simulate, FORMULA

out = {}
rng = np.random.default_rng(2024)
N = 48
i = np.arange(N)
d = pd.DataFrame({"x": rng.normal(size=N), "vi": rng.uniform(0.01, 0.06, size=N), "study": i // 4,
                  "species": [f"sp{k}" for k in i % 6], "z": rng.normal(size=N)})
d["yi"] = 0.3 + 0.2 * d["x"] + rng.normal(0, 0.4, size=N) + rng.normal(0, 0.3, size=12)[d["study"]]
vi = d["vi"].to_numpy()
Vd = np.diag(vi)
for s in range(0, N, 4):
    blk = slice(s, s + 4); sd = np.sqrt(vi[blk])
    Vd[blk, blk] = 0.4 * np.outer(sd, sd) + 0.6 * np.diag(vi[blk])

def dump(name, fit):
    out[name] = dict(theta=fit._raw.theta.tolist(), vcov=fit._raw.vcov.ravel().tolist(), loglik=fit._raw.loglik,
                     structure=fit.structure, it=fit._raw.iterations)
    print(name, fit.structure, fit._raw.loglik, flush=True)

cases = [
    ("diag", "yi ~ x + meta_V(V=vi)", dict(sigma="~ z"), [None, "dense"]),
    ("block", "yi ~ x + (1|study) + meta_V(V=vi)", {}, [None, "woodbury", "dense"]),
    ("crossed", "yi ~ x + (1|study) + (1|species) + meta_V(V=vi)", {}, [None, "dense"]),
    ("slopes", "yi ~ x + (1 + x|study) + meta_V(V=vi)", {}, [None, "woodbury", "dense"]),
    ("denseV", "yi ~ x + (1|study) + meta_V(V=V)", {}, [None, "dense"]),
]
for name, f, kw, structs in cases:
    for s in structs:
        for method in ("REML", "ML"):
            fit = drm.fit(drm.Formula(f, **kw), data=d, env={"V": Vd}, method=method,
                          control=None if s is None else {"structure": s})
            dump(f"{name}/{s}/{method}", fit)
# deletion refits: intercepts path and woodbury/dense paths
fit = drm.fit(drm.Formula("yi ~ x + (1|study) + meta_V(V=vi)"), data=d)
loo = drm.leave_one_out(fit) if hasattr(drm, "leave_one_out") else fit.leave_one_out()
out["loo/intercepts"] = np.asarray(loo.select_dtypes("number").to_numpy(), float).ravel().tolist()
fit = drm.fit(drm.Formula("yi ~ x + (1|study) + meta_V(V=V)"), data=d, env={"V": Vd}, control={"structure": "dense"})
loo = fit.leave_one_out()
out["loo/dense"] = np.asarray(loo.select_dtypes("number").to_numpy(), float).ravel().tolist()
# bivariate
for miss in (True, False):
    data, V = _simulate(missing=miss)
    for s in (None, "dense"):
        fit = drm.fit(drm.Formula(**FORMULA), data=data, env={"V": V}, control=None if s is None else {"structure": s})
        dump(f"biv/{miss}/{s}", fit)
# tree
import json as _j
folder = ROOT / "tests" / "reference_extra" / "phylo" / "rcoal30"
data = pd.read_csv(folder / "data.csv"); tree = (folder / "tree.nwk").read_text()
info = _j.loads((folder / "case.json").read_text())
study = " + (1|study)" if info["crossed_study"] else ""
for s in ("tree", "woodbury"):
    fit = drm.fit(drm.Formula(f"yi ~ x + phylo(1|phylo, tree=tree) + (1|species){study} + meta_V(V=vi)"), data=data,
                  control={"structure": s})
    dump(f"tree/{s}", fit)
json.dump(out, open(sys.argv[1], "w"))
