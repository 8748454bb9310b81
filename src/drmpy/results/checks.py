"""``check()``: one row per diagnostic, in the manner of drmTMB's ``check_drm``.

Every row can fail; the thresholds are drmTMB's where it has one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..engine.optimize import MAX_ITER, STATUS_NAMES
from .boundary import SMALL_RATIO, TINY_RATIO, bivariate_sigma_components, variance_components

__all__ = ["check_fit", "check_bivariate_fit", "GRADIENT_WARN"]

GRADIENT_WARN = 1e-3
SE_INFLATED_ABS = 50.0
SE_INFLATED_REL = 1000.0
DESIGN_MB_NOTE = 25.0
DESIGN_COLS_NOTE = 30
V_CONDITION_WARN = 1e8
DENSE_V_NOTE = ("V does not split into independent blocks: it is evaluated with a dense Cholesky of the "
                "n x n covariance (O(n^2) memory, O(n^3) time), a caution at large n.")


def _row(rows, check, status, value, message):
    rows.append({"check": check, "status": status, "value": value, "message": message})


def check_fit(fit) -> pd.DataFrame:
    design = fit.design
    rows: list[dict] = []
    _estimation_rows(fit, rows)
    _dropped_rows_row(design, rows)
    if design.common_effect:
        _row(rows, "common_effect", "ok", "sigma=0",
             "sigma ~ 0: common-effect model, sigma fixed at 0 (no residual heterogeneity beyond V"
             + (" and the random effects)." if design.random else ")."))
    else:
        _positive_scale_row(fit.sigma().to_numpy(), "sigma", rows)
    components = variance_components(design, fit._raw.theta, fit._raw.vcov)
    _boundary_row(fit, rows, components)
    _known_v_row(design, rows)
    _phylo_route_row(fit, rows)
    _random_rows(fit, rows, components)
    _random_design_row(design, rows)
    _design_size_row(design, rows)
    return pd.DataFrame(rows, columns=["check", "status", "value", "message"])


def _phylo_route_row(fit, rows):
    """Models with a phylo() term: which likelihood route evaluated it."""
    phylo = [rd for rd in fit.design.random if rd.tree is not None or rd.term.relmat_kind == "tree"]
    if not phylo:
        return
    species = phylo[0].n_levels
    if fit.structure == "tree":
        _row(rows, "phylo_likelihood", "ok", "tree",
             f"phylo(): exact linear-time pass over the tree ({species} species; Ho and Ane 2014), "
             "no n x n matrix formed.")
    else:
        from ..phylo.route import tree_route_refusal  # a later module, imported with phylo() terms

        why = tree_route_refusal(fit.design)
        alternative = ("control={'structure': 'tree'} walks the tree instead" if why is None
                       else "the linear-time tree pass does not apply: " + why)
        _row(rows, "phylo_likelihood", "ok", fit.structure,
             f"phylo(): the dense {species} x {species} phylogenetic correlation matrix "
             f"(structure '{fit.structure}'); {alternative}")


def _estimation_rows(fit, rows):
    """Optimiser, objective, gradient, Hessian and standard-error rows (every model)."""
    raw = fit._raw
    if fit.converged:
        _row(rows, "optimizer_convergence", "ok", STATUS_NAMES[raw.status], f"Optimizer {fit.convergence_message}.")
    else:
        _row(rows, "optimizer_convergence", "warning", STATUS_NAMES[raw.status],
             f"Optimizer did not converge: {fit.convergence_message}. Try control={{'max_iter': ...}}, "
             "simpler sigma/sd formulas, or check for a variance at its boundary.")

    budget = f"iterations={raw.iterations}; max_iter={fit._control.max_iter}; evaluations={raw.evaluations}"
    if raw.status == MAX_ITER:
        _row(rows, "optimizer_budget", "note", budget, "The iteration limit was hit before convergence.")
    else:
        _row(rows, "optimizer_budget", "ok", budget, "Optimizer finished within its iteration limit.")

    names = fit.params.index
    bad_estimates = names[~np.isfinite(fit.params.to_numpy())]
    if not np.isfinite(fit.loglik):
        _row(rows, "finite_objective", "error", fit.loglik, "The log-likelihood is not finite.")
    elif len(bad_estimates):
        _row(rows, "finite_objective", "error", f"n_nonfinite_estimates={len(bad_estimates)}",
             f"The log-likelihood is finite but estimates are not: {', '.join(bad_estimates[:5])}.")
    else:
        _row(rows, "finite_objective", "ok", round(fit.loglik, 4), "Objective and log-likelihood are finite.")

    g = np.abs(raw.gradient)
    if g.size and np.all(np.isfinite(g)):
        j = int(np.argmax(g))
        val = f"max={g[j]:.3g}; component={names[j]}"
        if g[j] <= GRADIENT_WARN:
            _row(rows, "fixed_gradient", "ok", val, f"Maximum absolute gradient is <= {GRADIENT_WARN:g}.")
        else:
            _row(rows, "fixed_gradient", "warning", val, f"Maximum absolute gradient exceeds {GRADIENT_WARN:g}; the optimum is doubtful.")
    else:
        _row(rows, "fixed_gradient", "error", "non-finite", "The gradient at the estimate is not finite.")

    eig = raw.hessian_min_eigenvalue
    if np.isfinite(eig) and eig > 0:
        _row(rows, "hessian_positive_definite", "ok", f"min_eigenvalue={eig:.3g}", "The Hessian of the negative log-likelihood is positive definite.")
    else:
        _row(rows, "hessian_positive_definite", "warning", f"min_eigenvalue={eig:.3g}",
             "The Hessian is not positive definite: standard errors are unreliable (a parameter may be at a boundary or not identified).")

    se = fit.std_errors.to_numpy()
    finite = np.isfinite(se)
    if finite.all():
        _row(rows, "standard_errors_finite", "ok", f"range=[{se.min():.4g},{se.max():.4g}]", "All standard errors are finite.")
    else:
        bad = ", ".join(names[~finite][:5])
        _row(rows, "standard_errors_finite", "warning", f"n_nonfinite={int((~finite).sum())}", f"Non-finite standard errors: {bad}.")

    if finite.any():
        med = float(np.median(se[finite]))
        inflated = finite & (se >= SE_INFLATED_ABS) & (se >= SE_INFLATED_REL * med)
        val = f"n_inflated={int(inflated.sum())}; max_se={np.max(se[finite]):.4g}; median_se={med:.4g}"
        if inflated.any():
            _row(rows, "standard_errors_inflated", "note", val,
                 f"Inflated standard errors (>= {SE_INFLATED_ABS:g} and >= {SE_INFLATED_REL:g} x median): {', '.join(names[inflated][:5])}.")
        else:
            _row(rows, "standard_errors_inflated", "ok", val, "No standard error is inflated relative to the others.")
    else:
        _row(rows, "standard_errors_inflated", "warning", "no finite SE", "No finite standard errors to compare.")



def _dropped_rows_row(design, rows):
    val = f"nobs={design.nobs}; dropped={design.n_dropped}"
    if design.n_dropped:
        why = "; ".join(f"{k}: {v}" for k, v in design.dropped.items())
        shown = ", ".join(map(repr, design.dropped_labels[:10]))
        more = " ..." if len(design.dropped_labels) > 10 else ""
        _row(rows, "dropped_rows", "note", val, f"Rows dropped ({why}); labels: {shown}{more}.")
    else:
        _row(rows, "dropped_rows", "ok", val, "No rows were dropped by missing-value or known-covariance filtering.")


def _positive_scale_row(sig, name, rows):
    if np.all(np.isfinite(sig)) and np.all(sig > 0):
        _row(rows, "positive_scale", "ok", f"min={sig.min():.4g}", "All fitted scale values are finite and positive.")
    else:
        _row(rows, "positive_scale", "error", f"min={np.nanmin(sig) if np.isfinite(sig).any() else np.nan}",
             f"Some fitted {name} values are zero, negative or non-finite.")


BOUNDARY_RULE = (f"below {TINY_RATIO:g} of the typical SD of the other variance in play, or below "
                 f"{SMALL_RATIO:g} of it with a log-SD standard error that cannot tell it from zero")


def _boundary_result(rows, flagged: list[str], value: str, also: str) -> None:
    """The ``boundary`` row: a note naming the SDs at zero, else ok."""
    if flagged:
        _row(rows, "boundary", "note", value,
             f"{', '.join(flagged)} ran toward a zero SD (log-SD coefficient toward -infinity); the "
             f"log-likelihood is at its boundary value and the SEs of those coefficients{also} are not meaningful.")
    else:
        _row(rows, "boundary", "ok", value, "No SD is at its zero boundary.")


def _boundary_row(fit, rows, components):
    """The ``boundary`` row (and ``boundary_optimum``): the scale-free rule of
    :mod:`drmpy.results.boundary` over sigma and every random-effect SD."""
    sig = fit.sigma().to_numpy()
    flagged = [c.name for c in components if c.at_boundary]
    _boundary_result(rows, flagged, f"min_sigma={sig.min():.3g}", "")
    gain = fit._raw.boundary_gain
    if gain > 0:
        _row(rows, "boundary_optimum", "note", f"loglik_gain={gain:.6g}",
             "The optimiser first stopped at an interior local optimum; the fit with "
             f"{', '.join(flagged) or 'a variance component'} at zero is better by {gain:.6g} in "
             "log-likelihood and is the one reported (its SD is at the boundary).")


def _known_v_row(design, rows):
    kv = design.known_v
    if kv.kind == "none":
        _row(rows, "known_sampling_covariance", "ok", "type=none", "No meta_V(): no known sampling covariance.")
        return
    val = f"type={kv.kind}; n={len(kv.diag)}; range=[{kv.diag.min():.4g},{kv.diag.max():.4g}]"
    if kv.matrix is None:
        _row(rows, "known_sampling_covariance", "ok", val, f"Known sampling covariance is recorded through meta_V(V = {kv.name}).")
        return
    val += f"; rank={kv.rank}; condition={kv.condition:.3g}; blocks={len(kv.blocks)}"
    n = len(kv.diag)
    if kv.rank < n:
        _row(rows, "known_sampling_covariance", "warning", val, f"V is rank-deficient (rank {kv.rank} of {n}).")
    elif kv.condition > V_CONDITION_WARN:
        _row(rows, "known_sampling_covariance", "warning", val, f"V is ill-conditioned (condition number > {V_CONDITION_WARN:g}).")
    elif len(kv.blocks) == 1:
        # one block: drmTMB's "dense V" label, a caution about scale (O(n^2) memory, O(n^3) time)
        _row(rows, "known_sampling_covariance", "note", val,
             f"Known sampling covariance is recorded through meta_V(V = {kv.name}). {DENSE_V_NOTE}")
    else:
        _row(rows, "known_sampling_covariance", "ok", val, f"Known sampling covariance is recorded through meta_V(V = {kv.name}).")


def _random_rows(fit, rows, components):
    for rd in fit.design.random:
        sds = fit.sd(rd.group).to_numpy()
        val = f"min_sd={sds.min():.3g}; max_sd={sds.max():.3g}"
        flagged = [c.name for c in components if c.group == rd.group and c.at_boundary]
        if flagged:
            _row(rows, f"sd_boundary[{rd.group}]", "note", val,
                 f"{', '.join(flagged)} is at its zero boundary for some level ({BOUNDARY_RULE}).")
        else:
            _row(rows, f"sd_boundary[{rd.group}]", "ok", val, f"sd({rd.group}) is away from zero.")
        single = int(np.sum(rd.level_counts < 2))
        val = f"levels={rd.n_levels}; singletons={single}; min_rows={int(rd.level_counts.min())}"
        if single:
            _row(rows, f"level_replication[{rd.group}]", "note", val,
                 f"{single} level(s) of {rd.group} have fewer than 2 rows; their effect is separated from sigma only through the model.")
        else:
            _row(rows, f"level_replication[{rd.group}]", "ok", val, f"Every level of {rd.group} has at least 2 rows.")
        k = sum(d.matrix.shape[1] for d in rd.sd_designs)
        _row(rows, f"sd_predictors_constant[{rd.group}]", "ok", f"sd_coefficients={k}",
             f"sd() predictors are constant within each level of {rd.group}.")


WEAK_RANDOM_DESIGN = ("At least one random-slope or correlated random-effect block has weak within-group "
                      "design variation; interpret slope SDs or correlations cautiously.")


def within_level_design(rd) -> tuple[dict[str, int], tuple[int, int] | None]:
    """For one random-effect term: per slope, the minimum over levels of the number of
    distinct slope values within the level; for a correlated term with more than one
    coefficient, (minimum within-level rank of its design z, number of coefficients)."""
    order = np.argsort(rd.level_index, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(rd.level_index[order]) != 0])
    levels = np.split(order, starts[1:])
    names = rd.term.coefficient_names
    unique = {}
    for c, name in enumerate(names):
        if name != "(Intercept)":
            unique[name] = min(len(np.unique(rd.z[idx, c])) for idx in levels)
    rank = None
    if rd.term.correlated and rd.n_coef > 1:
        rank = (min(int(np.linalg.matrix_rank(rd.z[idx])) for idx in levels), rd.n_coef)
    return unique, rank


def _random_design_row(design, rows):
    """drmTMB's ``mu_random_effect_design``: within-level variation of random slopes and the
    within-level rank of correlated blocks (no row without random slopes)."""
    parts, weak = [], False
    for rd in design.random:
        unique, rank = within_level_design(rd)
        for name, n_unique in unique.items():
            parts.append(f"min_unique={rd.group}|{name}={n_unique}")
            weak |= n_unique < 2
        if rank is not None:
            parts.append(f"min_rank={rd.group}={rank[0]}/{rank[1]}")
            weak |= rank[0] < rank[1]
    if not parts:
        return
    if weak:
        _row(rows, "mu_random_effect_design", "note", "; ".join(parts), WEAK_RANDOM_DESIGN)
    else:
        _row(rows, "mu_random_effect_design", "ok", "; ".join(parts),
             "Every random slope varies within every level and every correlated block has full "
             "within-level rank.")


def _design_size_row(design, rows):
    mats = {d.dpar: d.matrix for d in design.designs}
    total_mb = sum(m.nbytes for m in mats.values()) / 2**20
    largest = max(mats, key=lambda k: mats[k].shape[1])
    max_cols = mats[largest].shape[1]
    val = f"total_mb={total_mb:.4g}; max_cols={max_cols}; largest={largest}"
    if total_mb >= DESIGN_MB_NOTE or max_cols >= DESIGN_COLS_NOTE:
        _row(rows, "fixed_effect_design_size", "note", val,
             f"Fixed-effect design matrices are large (>= {DESIGN_MB_NOTE:g} MB or >= {DESIGN_COLS_NOTE} columns).")
    else:
        _row(rows, "fixed_effect_design_size", "ok", val, "Dense fixed-effect design matrices are modest for this fit.")


RHO_BOUNDARY_WARN = 0.98


def check_bivariate_fit(fit) -> pd.DataFrame:
    """check() of a bivariate fit: estimation rows, incomplete pairs, scales, rho12_boundary."""
    design = fit.design
    rows: list[dict] = []
    _estimation_rows(fit, rows)

    kept = design.kept
    val = (f"studies={design.nobs}; responses={design.n_responses}; dropped_responses={design.n_dropped}; "
           f"dropped_studies={design.n_dropped_studies}")
    if design.n_dropped:
        why = "; ".join(f"{k}: {v}" for k, v in design.dropped.items())
        _row(rows, "dropped_responses", "note", val,
             f"Responses dropped ({why}); studies without any kept response: {design.n_dropped_studies}.")
    else:
        _row(rows, "dropped_responses", "ok", val, "No response was dropped.")

    single = int(np.sum(kept.sum(axis=1) == 1))
    val = f"complete_pairs={int(kept.all(axis=1).sum())}; single_response={single}; decoupled={design.n_decoupled}"
    if design.n_decoupled:
        _row(rows, "incomplete_pairs", "note", val,
             f"{design.n_decoupled} stud(ies) with both responses lack the rho12 predictors: their responses enter "
             "as independent marginals (no residual correlation).")
    elif single:
        _row(rows, "incomplete_pairs", "note", val,
             f"{single} stud(ies) contribute one response (its univariate marginal).")
    else:
        _row(rows, "incomplete_pairs", "ok", val, "Every study contributes both responses.")

    sig = fit.sigma()
    values = np.concatenate([s[~np.isnan(s)] for s in sig.values()])
    _positive_scale_row(values, "sigma1/sigma2", rows)

    flagged = [c.name for c in bivariate_sigma_components(design, fit._raw.theta, fit._raw.vcov) if c.at_boundary]
    value = "; ".join(f"min_{k}={np.nanmin(s):.3g}" for k, s in sig.items())
    _boundary_result(rows, flagged, value, " (and of rho12)")

    rho = fit.rho12()
    rho = rho[np.isfinite(rho)]
    if rho.size == 0:
        _row(rows, "rho12_boundary", "ok", "pairs=0", "No correlated pair: rho12 does not enter the likelihood.")
    else:
        worst = float(np.max(np.abs(rho)))
        val = f"max_abs_rho12={worst:.4g}; pairs={rho.size}"
        if worst > RHO_BOUNDARY_WARN:
            _row(rows, "rho12_boundary", "warning", val,
                 f"|rho12| exceeds {RHO_BOUNDARY_WARN:g} for {int(np.sum(np.abs(rho) > RHO_BOUNDARY_WARN))} pair(s): "
                 "the residual correlation is near +-1, where its atanh coefficient and SE are unreliable.")
        else:
            _row(rows, "rho12_boundary", "ok", val, f"|rho12| <= {RHO_BOUNDARY_WARN:g} for every pair.")

    pv = design.v
    if pv.name is None:
        _row(rows, "known_sampling_covariance", "ok", "type=none", "No meta_V(): no known sampling covariance.")
    elif pv.block_diagonal:
        _row(rows, "known_sampling_covariance", "ok", f"type={pv.kind}; 2x2 blocks={design.nobs}",
             f"Known sampling covariance meta_V(V = {pv.name}) is block-diagonal by study.")
    else:
        kv = pv.known
        val = f"type={pv.kind}; n={len(kv.diag)}; rank={kv.rank}; condition={kv.condition:.3g}"
        status = "warning" if kv.rank < len(kv.diag) or kv.condition > V_CONDITION_WARN else "note"
        _row(rows, "known_sampling_covariance", status, val,
             f"meta_V(V = {pv.name}) correlates different studies: the full covariance is factored (O(n^3)).")
    _design_size_row(design, rows)
    return pd.DataFrame(rows, columns=["check", "status", "value", "message"])
