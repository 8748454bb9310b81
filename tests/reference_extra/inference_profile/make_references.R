# metafor 3.8-1 references for drmpy's common-effect model and profile-likelihood intervals.
# Run from the repository root:  Rscript tests/reference_extra/inference_profile/make_references.R
# Writes references.json beside this script.  Tight control everywhere (see issue 10):
#   rma:               control = list(threshold = 1e-13, maxiter = 10000, stepadj = 0.5)
#   scale models/rma.mv: control = list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-14, maxit = 10000)
#   confint:           control = list(tol = 1e-12)
# Conventions: drmpy's log-SD coefficients are half of metafor's log-tau^2 (alpha) ones;
# drmpy's REML logLik = metafor's REML logLik - 0.5 log|X'X|.
suppressPackageStartupMessages({ library(metafor); library(jsonlite) })
args <- commandArgs(trailingOnly = FALSE)
file_arg <- grep("^--file=", args, value = TRUE)
out_dir <- if (length(file_arg)) dirname(normalizePath(sub("^--file=", "", file_arg[1]))) else "."

ctrl_rma <- list(threshold = 1e-13, maxiter = 10000, stepadj = 0.5)
ctrl_opt <- list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-14, maxit = 10000)
ctrl_ci <- list(tol = 1e-12)

bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg <- as.data.frame(bcg)
bcg$yi <- as.numeric(bcg$yi); bcg$vi <- as.numeric(bcg$vi)
write.csv(bcg[, c("trial", "ablat", "alloc", "year", "yi", "vi")], file.path(out_dir, "bcg.csv"), row.names = FALSE)
kon <- dat.konstantopoulos2011
write.csv(kon[, c("district", "school", "study", "year", "yi", "vi")], file.path(out_dir, "konstantopoulos.csv"), row.names = FALSE)

half_logdet_xtx <- function(X) 0.5 * as.numeric(determinant(crossprod(X), logarithm = TRUE)$modulus)

out <- list()

## 1. common-effect (EE) models ----------------------------------------------------------
ee <- function(mods, data) {
  res <- rma(yi, vi, mods = mods, data = data, method = "EE")
  X <- model.matrix(res)
  list(loglik_ml = as.numeric(logLik(res, REML = FALSE)),
       loglik_reml_drmTMB = as.numeric(logLik(res, REML = TRUE)) - half_logdet_xtx(X),
       beta = as.numeric(coef(res)), se_beta = as.numeric(res$se))
}
out$ee_bcg <- ee(~ 1, bcg)
out$ee_bcg_ablat <- ee(~ ablat, bcg)

## rma.mv with the district level only (no school/row level) -----------------------------
mv_district <- function(method) {
  res <- rma.mv(yi, vi, random = ~ 1 | district, data = kon, method = method, control = ctrl_opt)
  X <- model.matrix(res)
  ll <- as.numeric(logLik(res))
  if (method == "REML") ll <- ll - half_logdet_xtx(X)
  list(loglik = ll, beta = as.numeric(coef(res)), se_beta = as.numeric(res$se), sigma2 = res$sigma2)
}
out$mv_district_ml <- mv_district("ML")
out$mv_district_reml <- mv_district("REML")

## 2. profile-likelihood intervals ---------------------------------------------------------
## dat.bcg random-effects model: profile CI of tau (type = "PL")
for (m in c("ML", "REML")) {
  res <- rma(yi, vi, data = bcg, method = m, control = ctrl_rma)
  ci <- confint(res, type = "PL", control = ctrl_ci)
  out[[paste0("bcg_tau_", tolower(m))]] <- list(
    tau2 = res$tau2, tau_ci = as.numeric(ci$random["tau", c("ci.lb", "ci.ub")]),
    loglik = as.numeric(logLik(res)))
}

## location-scale models: profile CIs of the scale (log tau^2) coefficients
scale_ci <- function(scale, method) {
  res <- rma(yi, vi, data = bcg, scale = scale, method = method, control = ctrl_opt)
  lb <- ub <- numeric(0); lb_sign <- ub_sign <- character(0)
  for (j in seq_along(res$alpha)) {
    # lb.sign / ub.sign "<" / ">": the bound lies beyond metafor's search range (not a bound)
    ci <- confint(res, alpha = j, control = ctrl_ci)
    lb <- c(lb, ci$random[1, "ci.lb"]); ub <- c(ub, ci$random[1, "ci.ub"])
    lb_sign <- c(lb_sign, ci$lb.sign); ub_sign <- c(ub_sign, ci$ub.sign)
  }
  list(alpha = as.numeric(res$alpha), alpha_names = rownames(res$alpha),
       alpha_ci_lb = lb, alpha_ci_ub = ub, lb_sign = lb_sign, ub_sign = ub_sign,
       loglik = as.numeric(logLik(res)))
}
out$scale_ablat_ml <- scale_ci(~ ablat, "ML")
out$scale_ablat_reml <- scale_ci(~ ablat, "REML")
out$scale_alloc_ml <- scale_ci(~ alloc, "ML")

## three-level model: profile CIs of sigma2 (district, school) and their square roots
three <- function(method) {
  res <- rma.mv(yi, vi, random = ~ 1 | district/school, data = kon, method = method, control = ctrl_opt)
  c1 <- confint(res, sigma2 = 1, control = ctrl_ci)
  c2 <- confint(res, sigma2 = 2, control = ctrl_ci)
  list(sigma2 = res$sigma2, loglik = as.numeric(logLik(res)),
       sigma2_district_ci = as.numeric(c1$random[1, c("ci.lb", "ci.ub")]),
       sigma_district_ci = as.numeric(c1$random[2, c("ci.lb", "ci.ub")]),
       sigma2_school_ci = as.numeric(c2$random[1, c("ci.lb", "ci.ub")]),
       sigma_school_ci = as.numeric(c2$random[2, c("ci.lb", "ci.ub")]))
}
out$three_level_ml <- three("ML")
out$three_level_reml <- three("REML")

## 3. a REML fit whose interior local optimum (tau^2 = 0.0343) is worse than tau^2 = 0 ----------
## boundary_reml.csv: 8 studies simulated (numpy) until the REML criterion had an interior local
## maximum at least 0.05 below its value at tau^2 = 0.
bnd <- read.csv(file.path(out_dir, "boundary_reml.csv"))
res <- rma(yi, vi, data = bnd, method = "REML", control = ctrl_rma)
X <- model.matrix(res)
fixed_ll <- function(t2) as.numeric(logLik(rma(yi, vi, data = bnd, method = "REML", tau2 = t2))) - half_logdet_xtx(X)
grid <- exp(seq(log(1e-6), log(5), length.out = 2000))
prof <- sapply(grid, fixed_ll)
inner <- which(diff(sign(diff(prof))) == -2) + 1
out$boundary_reml <- list(tau2 = res$tau2, loglik_drmTMB = as.numeric(logLik(res)) - half_logdet_xtx(X),
                          loglik_at_zero = fixed_ll(0), interior_tau2 = grid[inner],
                          interior_loglik = prof[inner], max_over_grid = max(prof))

out$versions <- list(R = R.version.string, metafor = as.character(packageVersion("metafor")))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(out_dir, "references.json"))
