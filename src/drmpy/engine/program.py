"""From a ModelDesign to estimates: structure choice, padding, start values, one compiled program.

The compiled program (one per :class:`~drmpy.likelihood.Structure` and array shapes,
cached in-process by ``jax.jit`` and across processes by JAX's persistent cache) runs
the optimiser, then computes the GLS location estimate, the exact Hessian and the
covariance of all estimates:

* ML: inverse observed Hessian of ``-log L`` in (beta, phi) jointly;
* REML: ``Cov(phi)`` = inverse Hessian of ``-l_R``; ``Cov(beta) = (X'S^-1X)^-1 + J Cov(phi) J'``
  with ``J = d beta_hat / d phi``; ``Cov(beta, phi) = J Cov(phi)`` (drmTMB's convention).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..model.design import ModelDesign
from ..errors import DrmError
from .likelihood import (Arrays, RandomArrays, RandomStatic, Structure, elementwise_linalg, gram, row_sigma2,
                         variance_objective)
from .optimize import CONVERGED, NONFINITE, SolverOutput, newton_trust_region, value_grad_hessian_forward
from .scaling import scale_designs
from .start import constant_coefficients as _lstsq_const, start_values  # start values: engine/start.py
from .structures import get_structure, registered, structure_names
from .structures.block import bucket_size  # noqa: F401  (drmpy.batch pads its levels by this ladder)

__all__ = ["Control", "RawFit", "run_fit", "choose_structure", "boundary_candidates"]


@dataclass(frozen=True)
class Control:
    """Optimiser settings (``control=`` of :func:`drmpy.fit`).

    Attributes:
        max_iter: iteration limit of the Newton trust-region loop.
        gtol: stop when ``max|gradient| <= gtol * max(1, |objective|)``.
        structure: force a likelihood structure by its name in the registry
            :mod:`drmpy.engine.structures` (``"dense"`` evaluates the full n x n covariance;
            useful as an oracle).  None chooses the cheapest exact one.
    """

    max_iter: int = 200
    gtol: float = 1e-8
    structure: str | None = None

    @classmethod
    def coerce(cls, control: Any) -> "Control":
        if control is None:
            return cls()
        if isinstance(control, Mapping):
            unknown = set(control) - {"max_iter", "gtol", "structure"}
            if unknown:
                raise DrmError(
                    f"control: unknown option(s) {sorted(unknown)}; available: max_iter, gtol, structure."
                )
            control = cls(**control)
        if not isinstance(control, cls):
            raise DrmError(f"control must be a dict or drm.Control, got {type(control).__name__}.")
        if int(control.max_iter) < 0:
            raise DrmError("control: max_iter must be >= 0.")
        if not float(control.gtol) > 0:
            raise DrmError("control: gtol must be > 0.")
        names = structure_names()
        if control.structure is not None and control.structure not in names:
            raise DrmError(f"control: structure must be one of {', '.join(names)}; got {control.structure!r}.")
        return control


@dataclass(frozen=True)
class RawFit:
    """Estimates in numpy, link scales, parameter order (mu, sigma, sd(...)..., cor(...)...)."""

    theta: np.ndarray
    vcov: np.ndarray
    loglik: float
    # gradient of the objective at the estimate (all estimated parameters; scale coefficients
    # in the optimiser's standardised coordinates, engine.scaling, as the min eigenvalue)
    gradient: np.ndarray
    hessian_min_eigenvalue: float
    status: int
    iterations: int
    evaluations: int
    structure: Structure
    sigma: np.ndarray  # fitted sigma_i per retained row
    # X'S^-1X at the estimate (centred location coordinates), from the program's last step
    information: np.ndarray
    # log-likelihood gained by moving from the optimiser's interior optimum to a better fit
    # with a variance component at zero (0 when the first optimum was the best)
    boundary_gain: float = 0.0


# ------------------------------------------------------------------------------------------
# structure


def _clusters(design: ModelDesign) -> np.ndarray | None:
    """Cluster id per row such that S is block-diagonal by cluster, or None if unavailable."""
    n = design.nobs
    if any(r.is_relmat for r in design.random):
        return None
    if not design.random and design.known_v.blocks is None:
        return np.arange(n)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols = [], []
    offset = n
    kv = design.known_v
    if kv.blocks is not None:
        for b, idx in enumerate(kv.blocks):
            rows.append(idx)
            cols.append(np.full(len(idx), offset + b))
        offset += len(kv.blocks)
    for r in design.random:
        rows.append(np.arange(n))
        cols.append(offset + r.level_index)
        offset += r.n_levels
    if not rows:
        return np.arange(n)
    rr = np.concatenate(rows)
    cc = np.concatenate(cols)
    adj = coo_matrix((np.ones(len(rr)), (rr, cc)), shape=(offset, offset))
    _, labels = connected_components(adj, directed=False)
    return labels[:n]


def choose_structure(design: ModelDesign, forced: str | None) -> tuple[str, np.ndarray | None]:
    """The forced structure, or the first of the registry's automatic order that applies
    (the cheapest exact one), and the row clusters."""
    clusters = _clusters(design)
    if forced is not None:
        if forced not in structure_names():
            raise DrmError(f"control: structure must be one of {', '.join(structure_names())}; got {forced!r}.")
        why = get_structure(forced).refusal(design, clusters, automatic=False)
        if why is not None:
            raise DrmError(f"control: structure='{forced}' {why}")
        return forced, clusters
    for structure in registered():
        if structure.automatic and structure.refusal(design, clusters, automatic=True) is None:
            return structure.name, clusters if structure.reports_clusters else None
    raise DrmError("no covariance structure applies to this model.")  # dense always does


# counts of random-effect levels, blocks and bivariate studies up to 64 are padded to 16, 32
# or 64: each count is a dimension of the compiled program, and a few padded slots cost
# microseconds where another compile costs about a second
SMALL_COUNTS = (16, 32, 64)


def padded_count(n: int) -> int:
    """Levels of a random term, blocks of a bucket or studies of a bivariate fit after
    padding: 16, 32 or 64 up to 64, else :func:`padded_size` (padded slots are referenced
    by no data row)."""
    for size in SMALL_COUNTS:
        if n <= size:
            return size
    return padded_size(n)


# a single fit's rows are padded to 64 or 128 up to 128 rows: a pass over so few rows costs
# microseconds, compiling another shape about a second
SMALL_FIT_ROWS = (64, 128)


def single_fit_rows(n: int) -> int:
    """Rows of a single fit after padding: 64 or 128 for small data (one compile serves every
    data set of up to 128 rows of a model), else :func:`padded_size`."""
    for size in SMALL_FIT_ROWS:
        if n <= size:
            return size
    return padded_size(n)


def padded_size(n: int) -> int:
    """Row count padded up a geometric ladder (ratio 2^(1/4)) so nearby sizes share a compile."""
    if n <= 16:
        return 16
    k = math.ceil(4 * math.log2(n))
    size = int(math.ceil(2 ** (k / 4)))
    return max(size, n)


# ------------------------------------------------------------------------------------------
# arrays


def _device(value) -> jax.Array:
    """A host value on the default device.  ``jax.device_put`` of a numpy array transfers
    it; ``jnp.asarray`` would also run (and, in a fresh process, compile) a conversion."""
    return jax.device_put(np.asarray(value))


def build_arrays(design: ModelDesign, kind: str, clusters: np.ndarray | None,
                 beta0: np.ndarray, method: str) -> tuple[Arrays, Structure]:
    """(arrays, static description) of ``design`` for the structure named ``kind``, rows
    padded (:func:`single_fit_rows`) and ``y`` centred at ``beta0``.  The structure builds
    its own part (``Arrays.extra``, ``Structure.extra``) from ``clusters``."""
    structure = get_structure(kind)
    n = design.nobs
    X = design.fixed["mu"].matrix
    Zs = design.fixed["sigma"].matrix
    y = design.y - X @ beta0
    w = design.weights if design.weights is not None else np.ones(n)
    kv = design.known_v
    N = single_fit_rows(n)
    pad = N - n

    def padrows(a, fill=0.0):
        if pad == 0:
            return a
        shape = (pad,) + a.shape[1:]
        return np.concatenate([a, np.full(shape, fill, dtype=a.dtype)], axis=0)

    v = padrows(kv.diag, 1.0)
    mask = padrows(np.ones(n), 0.0)
    random_arrays = []
    random_static = []
    for rd in design.random:
        # levels are padded like rows; padded levels are referenced by no row, and index
        # L_pad is the "no level" of padding rows and slots
        L_pad = padded_count(rd.n_levels)
        lev = padrows(rd.level_index, L_pad)
        if structure.relatedness_factor(rd):
            Kchol = np.eye(L_pad)
            Kchol[: rd.n_levels, : rd.n_levels] = np.linalg.cholesky(rd.relatedness())
        else:
            Kchol = np.zeros((0, 0))
        sd_designs = []
        for d in rd.sd_designs:
            W = np.zeros((L_pad, d.matrix.shape[1]))
            W[: rd.n_levels] = d.matrix
            sd_designs.append(_device(W))
        random_arrays.append(RandomArrays(_device(lev), _device(padrows(rd.z)),
                                          tuple(sd_designs), _device(Kchol)))
        random_static.append(RandomStatic(L_pad, rd.n_coef,
                                          tuple(d.matrix.shape[1] for d in rd.sd_designs),
                                          rd.n_cor, rd.is_relmat))
    extra_arrays, extra_static = structure.build(design, clusters, N)
    arrs = Arrays(
        y=_device(padrows(y)),
        X=_device(padrows(X)),
        Z_sigma=_device(padrows(Zs)),
        w=_device(padrows(w, 0.0)),
        mask=_device(mask),
        n_obs=_device(float(np.sum(w))),
        v=_device(v),
        random=tuple(random_arrays),
        extra=extra_arrays,
    )
    struct = Structure(kind, X.shape[1], Zs.shape[1], tuple(random_static), method, extra=extra_static)
    return arrs, struct


# ------------------------------------------------------------------------------------------
# the compiled program


def _program_fn(struct: Structure, elementwise: bool = False):
    """The whole fit as one pure function of arrays (un-jitted).

    ``elementwise=True`` replaces the small dense eigen-decompositions, inverses and SPD
    solves by elementwise code (``likelihood.UNROLL_MAX``)
    (:mod:`drmpy.small_linalg`, :func:`drmpy.likelihood.elementwise_linalg`), for programs
    that are ``vmap``-ed over many fits: jaxlib's batched LAPACK kernels can deadlock on
    CPU inside the loop.
    """
    if _closed_form_diag(struct, elementwise):
        return _diag_closed_form_fn(struct)
    objective = variance_objective(struct)
    p = struct.p
    if elementwise:
        from .small_linalg import jacobi_eigh, sym_inverse, sym_min_eigenvalue

        eigh, inv, min_eigenvalue = jacobi_eigh, sym_inverse, sym_min_eigenvalue
    else:
        eigh, inv = jnp.linalg.eigh, jnp.linalg.inv

        def min_eigenvalue(M):
            return jnp.min(jnp.linalg.eigvalsh(M))

    def run(arrs: Arrays, phi0, max_iter, gtol, boundary=None):
        if elementwise:
            with elementwise_linalg():
                return _run(arrs, phi0, max_iter, gtol, boundary)
        return _run(arrs, phi0, max_iter, gtol, boundary)

    def _run(arrs: Arrays, phi0, max_iter, gtol, boundary):
        if phi0.shape[0] == 0:
            # no variance parameter (common-effect model without random effects): the GLS
            # estimate is the answer, in closed form
            f0 = objective(phi0, arrs, struct)
            sol = SolverOutput(phi0, f0, jnp.zeros(0), jnp.zeros((0, 0)), jnp.asarray(CONVERGED),
                               jnp.asarray(0), jnp.asarray(1))
        else:
            fun = lambda ph: objective(ph, arrs, struct)  # noqa: E731
            # the tree pass compiles far faster differentiated forward-over-forward
            forward = get_structure(struct.kind).forward_derivatives
            derivatives = value_grad_hessian_forward(fun) if forward else None
            sol = newton_trust_region(fun, phi0, max_iter=max_iter, gtol=gtol, eigh=eigh,
                                      derivatives=derivatives)
        phi = sol.x
        H_phi = sol.hess

        def location_pieces(ph):
            _, M = gram(ph, arrs, struct)
            return M[:p, :p], M[:p, p]

        A, b = location_pieces(phi)
        A_inv = inv(A)
        beta = A_inv @ b
        if struct.method == "REML":
            # J = d beta_hat / d phi, from the derivatives of A and b (forward mode only).
            dA, db = jax.jacfwd(location_pieces)(phi)  # (p, p, k), (p, k)
            J = A_inv @ (db - jnp.einsum("ijk,j->ik", dA, beta))
            C = inv(H_phi) if H_phi.shape[0] else H_phi
            cross = J @ C
            vcov = jnp.block([[A_inv + J @ C @ J.T, cross], [cross.T, C]])
            full_grad = jnp.concatenate([jnp.zeros(p), sol.grad])
            min_eig = min_eigenvalue(H_phi) if H_phi.shape[0] else min_eigenvalue(A)
        else:
            # Joint Hessian of -log L at (beta_hat, phi) from the profiled one: the profiled
            # Hessian is the Schur complement H_pp - H_pb A^-1 H_bp, and H_bp = d(A beta - b)/d phi.
            dA, db = jax.jacfwd(location_pieces)(phi)
            H_bp = jnp.einsum("ijk,j->ik", dA, beta) - db
            H = jnp.block([[A, H_bp], [H_bp.T, H_phi + H_bp.T @ A_inv @ H_bp]])
            vcov = inv(H)
            min_eig = min_eigenvalue(H)
            full_grad = jnp.concatenate([A @ beta - b, sol.grad])
        f = sol.f
        gamma = phi[: struct.k_sigma]
        sigma = jnp.sqrt(row_sigma2(gamma, arrs)) if struct.k_sigma == 0 else jnp.exp(arrs.Z_sigma @ gamma)
        out = dict(beta=beta, phi=phi, f=f, grad=full_grad, vcov=vcov, min_eig=min_eig,
                   status=sol.status, iterations=sol.iterations, evaluations=sol.evaluations,
                   sigma=sigma, information=A)
        if boundary is not None:
            # the objective with each variance component at its zero boundary, the others at
            # their estimates (see boundary_candidates): one evaluation each, no derivatives
            masks, values = boundary
            out["boundary_f"] = jax.lax.map(lambda ph: objective(ph, arrs, struct),
                                            jnp.where(masks > 0, values, phi[None, :]))
        return out

    return run


def _closed_form_diag(struct: Structure, elementwise: bool) -> bool:
    """A diagonal V without random effects: derivatives in closed form (engine.batch)."""
    return (get_structure(struct.kind).closed_form_diag and struct.p > 0 and struct.k_sigma > 0 and not struct.random
            and not struct.pairs and not elementwise)


# A single diagonal fit with at least this many (padded) rows first runs Newton on every
# stride-th row (about SUBSAMPLE_ROWS rows): its optimum is a start from which the
# full-data Newton converges in two steps (three full evaluations instead of five at n = 1e6).
SUBSAMPLE_MIN_ROWS = 2**17
SUBSAMPLE_ROWS = 2**15


def subsample_stride(n_rows: int) -> int | None:
    """Row stride of the subsample start for ``n_rows`` padded rows (None: no subsample)."""
    return n_rows // SUBSAMPLE_ROWS if n_rows >= SUBSAMPLE_MIN_ROWS else None


def _subsample_start(c, phi0, max_iter, gtol, reml: bool, stride: int):
    """Start values from the closed-form Newton on every ``stride``-th row of ``c`` (padding
    rows have w = 0 there too).  Only a start: the full-data Newton from it decides
    convergence; phi0 is kept when the subsample fit did not converge (e.g. a rare factor
    level no sampled row has)."""
    from . import diag_columns as dc

    sub = dc.DiagColumns(c.y[::stride], tuple(x[::stride] for x in c.Xt), tuple(z[::stride] for z in c.Zt),
                         c.v[::stride], c.w[::stride])
    pre = newton_trust_region(None, phi0, max_iter=max_iter, gtol=gtol, derivatives=dc.loop_derivatives(sub, reml))
    ok = (pre.status == CONVERGED) & jnp.all(jnp.isfinite(pre.x))
    return jnp.where(ok, pre.x, phi0)


def _diag_closed_form_fn(struct: Structure, stride: int | None | str = "auto"):
    """``_program_fn`` for the diagonal structure with the closed-form gradient and Hessian
    of :func:`drmpy.engine.batch.diag_derivatives` (beta profiled; O(n k^2) per iteration
    instead of automatic differentiation of the objective), same outputs and conventions.
    With few columns the designs are split into (N,) columns once and the row sums of each
    pass over the rows are one reduction (:mod:`drmpy.engine.diag_columns`); the covariance
    and ``information`` (X'S^-1X) come from the last evaluation's location pieces; many rows
    start from the optimum of a subsample (``stride``: "auto" = :func:`subsample_stride`
    of the padded row count, None = never, an int = that stride).
    ``evaluations`` counts the full-data evaluations."""
    from . import diag_columns as dc
    from .batch import DiagArrays, _diag_post, diag_derivatives

    reml = struct.method == "REML"
    objective = variance_objective(struct)
    by_columns = max(struct.p, struct.k_sigma) <= dc.MAX_COLUMNS

    def run(arrs: Arrays, phi0, max_iter, gtol, boundary=None):
        if by_columns:
            c = dc.DiagColumns(arrs.y, dc.columns(arrs.X), dc.columns(arrs.Z_sigma), arrs.v, arrs.w)
            step = subsample_stride(arrs.y.shape[0]) if isinstance(stride, str) else stride  # "auto"
            if step is not None and step > 1:
                phi0 = _subsample_start(c, phi0, max_iter, gtol, reml, step)
            # the evaluations also return the location pieces, so the covariance at the
            # optimum takes no further pass over the rows
            sol = newton_trust_region(None, phi0, max_iter=max_iter, gtol=gtol,
                                      derivatives=dc.loop_derivatives(c, reml, location=True))
            beta, grad, vcov = dc.location_post(sol.aux, sol.grad, sol.hess, reml)
            out = dict(beta=beta, grad=grad, vcov=vcov, information=sol.aux.A)
            value = lambda ph: dc.columns_value(ph, c, reml)  # noqa: E731
        else:
            a = DiagArrays(arrs.y, arrs.X, arrs.Z_sigma, arrs.v, arrs.w)
            sol = newton_trust_region(None, phi0, max_iter=max_iter, gtol=gtol,
                                      derivatives=lambda x: diag_derivatives(x, a, reml))
            out = _diag_post(a, sol.x, sol.f, sol.grad, sol.hess, sol.status, sol.iterations, reml)
            value = lambda ph: objective(ph, arrs, struct)  # noqa: E731
        sigma = jnp.exp(arrs.Z_sigma @ sol.x[: struct.k_sigma])
        if reml:
            min_eig = jnp.min(jnp.linalg.eigvalsh(sol.hess))
        else:  # the joint Hessian is the inverse of the covariance
            min_eig = 1.0 / jnp.max(jnp.linalg.eigvalsh(out["vcov"]))
        result = dict(beta=out["beta"], phi=sol.x, f=sol.f, grad=out["grad"], vcov=out["vcov"], min_eig=min_eig,
                      status=sol.status, iterations=sol.iterations, evaluations=sol.evaluations,
                      sigma=sigma, information=out["information"])  # X'S^-1X: inference.marginal.gls
        if boundary is not None:  # as in _program_fn: the objective at each zero-variance point
            masks, values = boundary
            result["boundary_f"] = jax.lax.map(value, jnp.where(masks > 0, values, sol.x[None, :]))
        return result

    return run


@functools.lru_cache(maxsize=64)
def _flat_program(struct: Structure, treedef):
    """``_program_fn`` taking the flattened argument leaves, jitted."""
    run = _program_fn(struct)

    def flat(*leaves):
        return run(*jax.tree_util.tree_unflatten(treedef, leaves))

    return jax.jit(flat)


_callables: dict = {}


def _source_digest() -> str:
    """Hash of the numerical modules: a serialized program is only re-used by the same code."""
    import hashlib
    from pathlib import Path

    h = hashlib.blake2b(digest_size=12)
    here = Path(__file__).parent
    # every module of engine/ and engine/structures/, and of phylo/ (its tree pass is traced
    # into the programs)
    paths = sorted(here.glob("*.py")) + sorted((here / "structures").glob("*.py"))
    for path in paths + sorted((here.parent / "phylo").glob("*.py")):
        h.update(path.read_bytes())
    h.update(jax.__version__.encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _export_dir():
    from .._jax import cache_enabled_by_drmpy, default_cache_dir

    if not cache_enabled_by_drmpy():
        return None
    return default_cache_dir().parent / "programs" / _source_digest()


def _exported(signature, leaves, build):
    """A jitted function of the flat ``leaves`` for ``signature``: the serialized ``jax.export``
    module kept on disk when drmpy's persistent cache is on (written on first use), else
    ``build()`` (the traced program).  Kept in ``_callables`` for the rest of the process
    (every exported program, single fits' and batch pools', in one place)."""
    fn = _callables.get(signature)
    if fn is None:
        fn = _callables[signature] = _load_or_export(signature, leaves, build)
    return fn


def _load_or_export(signature, leaves, build):
    folder = _export_dir()
    path = None
    fn = None
    if folder is not None:
        import hashlib

        digest = hashlib.blake2b(repr(signature).encode(), digest_size=16).hexdigest()
        path = folder / f"{digest}.jaxexport"
        if path.exists():
            try:
                exported = jax.export.deserialize(bytearray(path.read_bytes()))
                fn = jax.jit(exported.call)
            except Exception:  # a damaged or incompatible file: rebuild it below
                fn = None
    if fn is None:
        fn = build()
        if path is not None:
            try:
                exported = jax.export.export(fn)(*leaves)
                folder.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one writer per file name
                tmp.write_bytes(exported.serialize())
                tmp.replace(path)
                # run the exported module here too, so that XLA's cache holds the binary
                # later processes will ask for (the module, not this trace, is the key)
                fn = jax.jit(exported.call)
            except Exception:  # exporting is an optimisation only
                pass
    return fn


def _compiled(struct: Structure, treedef, leaves):
    """The compiled program for these shapes.

    Within a process: jax.jit's own cache.  Across processes (when drmpy's persistent cache
    is on) the program is also kept as a serialized ``jax.export`` module, so a fresh
    process skips tracing and lowering; XLA's compilation cache then supplies the binary.
    """
    signature = (struct, treedef, tuple((leaf.shape, str(leaf.dtype)) for leaf in leaves),
                 jax.default_backend())
    return _exported(signature, leaves, lambda: _flat_program(struct, treedef))


def prepare(design: ModelDesign, method: str, control: Control):
    """((arrays, structure, beta0, phi0), row clusters) for a design, cacheable per method."""
    kind, clusters = choose_structure(design, control.structure)
    beta0, phi0 = start_values(design)
    arrs, struct = build_arrays(design, kind, clusters, beta0, method)
    return (arrs, struct, beta0, phi0), clusters


BOUNDARY_SD_RATIO = 1e-8  # a component "at zero": SD 1e-8 of the sampling SD scale
# refit from a boundary point only when it is better by more than this times max(1, |f|)
# (log-likelihood units, relative as the optimiser's own tolerance, so that the units of y,
# which shift f by n log c, do not decide): a fit that already ran toward zero
# (converged_flat) sits within ~1e-8 max(1, |f|) of its boundary value
BOUNDARY_GAIN_MIN = 1e-6


def boundary_gain_threshold(f):
    """Smallest objective decrease from a boundary point that counts as a better optimum."""
    return BOUNDARY_GAIN_MIN * np.maximum(1.0, np.abs(f))


def boundary_candidates(design: ModelDesign) -> tuple[np.ndarray, np.ndarray] | None:
    """Where each variance component is at its zero boundary, as (masks, values), each
    (components, k) over the variance parameters phi.

    Components: sigma (all its coefficients) and every coefficient SD of every random term
    (``sd(g)``, ``sd(g|x)``).  At the boundary the component's log-SD is
    ``log(1e-8 sqrt(mean v))`` on every row or level (the model without it, to rounding:
    its variance is 1e-16 of the sampling variances); correlations keep their values.
    None when the model has no variance component.
    """
    blocks = []
    pos = 0
    if not design.common_effect:
        blocks.append((pos, design.fixed["sigma"].matrix))
    pos += design.fixed["sigma"].matrix.shape[1]
    for rd in design.random:
        for d in rd.sd_designs:
            blocks.append((pos, d.matrix))
            pos += d.matrix.shape[1]
        pos += rd.n_cor
    if not blocks:
        return None
    v = design.known_v.diag
    scale2 = float(np.mean(v)) if v.size and np.mean(v) > 0 else float(np.var(design.y)) + 1e-300
    log_sd = math.log(BOUNDARY_SD_RATIO * math.sqrt(scale2))
    masks = np.zeros((len(blocks), pos))
    values = np.zeros((len(blocks), pos))
    for i, (start, M) in enumerate(blocks):
        masks[i, start : start + M.shape[1]] = 1.0
        values[i, start : start + M.shape[1]] = _lstsq_const(M, log_sd)
    return masks, values


def _run_once(arrs, struct, phi0, control: Control, boundary):
    args: tuple = (arrs, _device(phi0), _device(int(control.max_iter)), _device(float(control.gtol)))
    if boundary is not None:
        args = args + (tuple(_device(b) for b in boundary),)
    leaves, treedef = jax.tree_util.tree_flatten(args)
    return jax.device_get(_compiled(struct, treedef, leaves)(*leaves))


def run_fit(prepared, control: Control, boundary: tuple[np.ndarray, np.ndarray] | None = None) -> RawFit:
    """Fit from prepared arrays.

    With ``boundary`` (from :func:`boundary_candidates`), the objective is also evaluated
    with each variance component at zero; when one is better than the converged optimum
    (an interior local optimum, e.g. REML with few studies), the fit is repeated from that
    boundary point and the better of the two is returned (``RawFit.boundary_gain`` > 0).
    """
    arrs, struct, beta0, phi0 = prepared
    # the optimiser sees standardised scale designs (engine.scaling); results are mapped back
    scaling = scale_designs(arrs, struct)
    if scaling is not None:
        arrs, phi0, boundary = scaling.arrays, scaling.to_internal(phi0), scaling.boundary_to_internal(boundary)
    out = _run_once(arrs, struct, phi0, control, boundary)
    gain = 0.0
    first_f = float(out["f"])
    for _ in range(3):  # each round moves to a strictly better boundary point
        if boundary is None or "boundary_f" not in out:
            break
        f_b = np.asarray(out["boundary_f"])
        f = float(out["f"])
        best = int(np.argmin(f_b)) if f_b.size else -1
        if best < 0 or not f_b[best] < f - boundary_gain_threshold(f):
            break
        masks, values = boundary
        start = np.where(masks[best] > 0, values[best], np.asarray(out["phi"]))
        again = _run_once(arrs, struct, start, control, boundary)
        if not float(again["f"]) < f:
            break
        out = again
        gain = first_f - float(out["f"])
    if scaling is not None:
        out = scaling.to_user(out, struct.p)
    n = int(round(float(np.sum(np.asarray(arrs.mask)))))
    beta = np.asarray(out["beta"]) + beta0
    theta = np.concatenate([beta, np.asarray(out["phi"])])
    status = int(out["status"])
    if not (np.isfinite(float(out["f"])) and np.all(np.isfinite(theta))):
        status = NONFINITE  # a non-finite log-likelihood or estimate is never converged
    return RawFit(
        theta=theta,
        vcov=np.asarray(out["vcov"]),
        loglik=-float(out["f"]),
        gradient=np.asarray(out["grad"]),
        hessian_min_eigenvalue=float(out["min_eig"]),
        status=status,
        iterations=int(out["iterations"]),
        evaluations=int(out["evaluations"]),
        structure=struct,
        sigma=np.asarray(out["sigma"])[:n],
        boundary_gain=gain,
        information=np.asarray(out["information"]),
    )
