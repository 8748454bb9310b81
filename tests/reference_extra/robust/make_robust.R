# Reference fits of R's metaplus (robust random-effects meta-analysis) for drmpy's Student-t and
# normal-mixture random effects (issue 26): writes robust_metaplus.json (and sim30.csv) beside
# this script. See README.md here for metaplus's parameterisation and how to read the numbers.
#
# Run from the repository root, with metaplus 1.0-8 and its imports on the library path:
#   R_LIBS=/work/rlib Rscript tests/reference_extra/robust/make_robust.R [cache folder]
# Every fit and bootstrap is cached as an .rds file in the cache folder (default
# /tmp/robust_cache), so a rerun after an interruption only does what is missing; delete the
# folder for a clean run. Each piece sets its own seed, so pieces do not depend on run order.
# All calls use cores = 1: metaplus's bootstraps (starting values of the mixture model and
# testOutliers) run through boot(), whose multicore mode is not reproducible from set.seed.
suppressPackageStartupMessages({
  library(metaplus)
  library(jsonlite)
  library(numDeriv)
})

args <- commandArgs(trailingOnly = TRUE)
cache_dir <- if (length(args) >= 1) args[1] else "/tmp/robust_cache"
dir.create(cache_dir, showWarnings = FALSE, recursive = TRUE)
out_dir <- "tests/reference_extra/robust"
stopifnot(dir.exists(out_dir))
stopifnot(packageVersion("metaplus") == "1.0.8")

SEED <- 12345  # the vignette's set.seed
R_BOOT <- list(mixture = 999L, t = 49L)  # testOutliers bootstrap sizes per model (see README)

cached <- function(name, compute) {
  path <- file.path(cache_dir, paste0(name, ".rds"))
  if (file.exists(path)) return(readRDS(path))
  started <- proc.time()[["elapsed"]]
  value <- compute()
  value$wall_s <- proc.time()[["elapsed"]] - started
  saveRDS(value, path)
  cat(sprintf("%s: %.1f s\n", name, value$wall_s))
  value
}

# ---- data --------------------------------------------------------------------------------------
data(cdp, package = "metaplus")
data(mag, package = "metaplus")
data(exercise, package = "metaplus")

# A 30-study data set for the timing of the outlier test (drmpy's benchmark uses the same CSV):
# t(3)-distributed true effects around 0.3 with scale 0.2, standard errors between 0.1 and 0.5.
make_sim30 <- function() {
  set.seed(20261204)
  k <- 30
  sei <- round(runif(k, 0.1, 0.5), 4)
  yi <- round(0.3 + 0.2 * rt(k, df = 3) + rnorm(k, 0, sei), 4)
  data.frame(study = sprintf("s%02d", seq_len(k)), yi = yi, sei = sei)
}
sim30 <- make_sim30()
write.csv(sim30, file.path(out_dir, "sim30.csv"), row.names = FALSE)

datasets <- list(
  cdp = list(data = cdp, yi = cdp$yi, sei = cdp$sei, mods = NULL, slab = as.character(cdp$study)),
  mag = list(data = mag, yi = mag$yi, sei = mag$sei, mods = NULL, slab = as.character(mag$study)),
  exercise = list(data = exercise, yi = exercise$smd, sei = sqrt(exercise$varsmd),
                  mods = exercise[, "duration", drop = FALSE], slab = as.character(exercise$study))
)

# ---- one fit -----------------------------------------------------------------------------------
# metaplus's negative log-likelihood at its estimate, and standard errors from numDeriv's Hessian
# of that function (metaplus itself reports none: it computes this Hessian only to size its
# profile steps). Parameters on the boundary (tau2 or tau2out or vinv below 1e-6) are left out
# of the inversion, as metaplus does, and get NA.
hessian_se <- function(fit, d) {
  model <- fit$fittedmodel
  est <- model@coef
  extra <- if (is.null(d$mods)) list(yi = d$yi, sei = d$sei)
           else list(yi = d$yi, sei = d$sei, mods = as.matrix(d$mods))
  fn <- function(p) do.call(model@minuslogl, c(list(p), extra))
  boundary <- names(est) %in% c("tau2", "tau2out", "vinv") & est < 1e-6
  se <- rep(NA_real_, length(est))
  names(se) <- names(est)
  h <- tryCatch(numDeriv::hessian(fn, est), error = function(e) NULL)
  if (!is.null(h)) {
    keep <- !boundary
    inv <- tryCatch(solve(h[keep, keep, drop = FALSE]), error = function(e) NULL)
    if (!is.null(inv)) {
      variances <- diag(inv)
      variances[variances < 0] <- NA  # not positive definite there: no standard error
      se[keep] <- sqrt(variances)
    }
  }
  list(se = as.list(se), negll_at_estimate = fn(est), boundary = names(est)[boundary])
}

random_names <- c(normal = "normal", t = "t-dist", mixture = "mixture")

# justfit = TRUE skips metaplus's profile intervals and LRT p values (the t model's profile takes
# minutes); testOutliers refuses such a fit, although it uses only yi, sei and mods, so the flag
# is reset on the kept object.
fit_one <- function(dname, model, justfit = FALSE) {
  d <- datasets[[dname]]
  cached(paste0(dname, "_", model, if (justfit) "_justfit" else ""), function() {
    set.seed(SEED)
    fit <- metaplus(yi = d$yi, sei = d$sei, mods = d$mods, random = random_names[[model]],
                    slab = d$slab, cores = 1, justfit = justfit)
    res <- if (justfit) cbind(fit$fittedmodel@coef, NA, NA, NA) else fit$results
    if (justfit && model == "mixture") rownames(res)[4] <- "lpoutlier"
    rows <- rownames(res)
    table <- lapply(seq_along(rows), function(i) list(
      est = unname(res[i, 1]), ci_lb = unname(res[i, 2]), ci_ub = unname(res[i, 3]),
      pvalue = unname(res[i, 4])))
    names(table) <- rows
    out <- list(
      call = sprintf("set.seed(%d); metaplus(yi, sei%s, random = \"%s\", cores = 1%s)", SEED,
                     if (is.null(d$mods)) "" else ", mods = duration", random_names[[model]],
                     if (justfit) ", justfit = TRUE" else ""),
      coef = as.list(fit$fittedmodel@coef),  # metaplus's scale, full precision (lpoutlier logit)
      results = table,                        # summary(): Est. / 95% profile CI / LRT p value
      logLik = as.numeric(logLik(fit)), AIC = AIC(fit), BIC = BIC(fit),
      df = attr(logLik(fit), "df"), nobs = length(d$yi),
      hessian = hessian_se(fit, d))
    if (model == "mixture") {
      out$outlier_prob <- as.list(setNames(fit$outlier.prob, d$slab))
      out$p_outlier <- plogis(fit$fittedmodel@coef[["lpoutlier"]])
    }
    fit$justfit <- FALSE
    out$fit <- fit  # kept in the cache for the bootstrap; dropped from the JSON
    out
  })
}

test_one <- function(dname, model, R, justfit = FALSE) {
  cached(sprintf("%s_%s_testOutliers_R%d", dname, model, R), function() {
    fit <- fit_one(dname, model, justfit)$fit
    set.seed(SEED)
    started <- proc.time()[["elapsed"]]
    tst <- testOutliers(fit, R = R, cores = 1)
    list(R = R, seed = SEED, pvalue = tst$pvalue, observed = unname(tst$observed),
         sims = unname(tst$sims), n_zero = sum(tst$sims == 0, na.rm = TRUE),
         n_na = sum(is.na(tst$sims)), test_wall_s = proc.time()[["elapsed"]] - started)
  })
}

# ---- write (after every stage, so a partial run still leaves its numbers) --------------------
strip <- function(x) { x$fit <- NULL; x }
fits <- list(); tests <- list(); timing <- list(); extra <- list()
write_json <- function(stage) {
  json <- list(
    generator = "tests/reference_extra/robust/make_robust.R",
    stage = stage,
    metaplus_version = as.character(packageVersion("metaplus")),
    versions = list(R = R.version.string, metafor = as.character(packageVersion("metafor")),
                    bbmle = as.character(packageVersion("bbmle")),
                    lme4 = as.character(packageVersion("lme4")),
                    Rfast = as.character(packageVersion("Rfast")),
                    fastGHQuad = as.character(packageVersion("fastGHQuad")),
                    numDeriv = as.character(packageVersion("numDeriv"))),
    seed = SEED,
    data = list(cdp = "drmpy.datasets.cdp()", mag = "drmpy.datasets.mag()",
                exercise = "metaplus::exercise (yi = smd, sei = sqrt(varsmd), mods = duration)",
                sim30 = "sim30.csv beside this file"),
    fits = lapply(fits, function(per) lapply(per, strip)),
    extra = extra,
    testOutliers = tests,
    timing_sim30 = timing,
    cores = 1L,
    machine = sprintf("%s, %d logical CPUs shared with other jobs (wall times are upper bounds)",
                      R.version$platform, parallel::detectCores()))
  writeLines(toJSON(json, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null",
                    na = "null"),
             file.path(out_dir, "robust_metaplus.json"))
  cat("wrote robust_metaplus.json, stage:", stage, "\n")
}

# ---- stage 1: fits -----------------------------------------------------------------------------
plan <- list(cdp = c("normal", "mixture", "t"), mag = c("normal", "mixture", "t"),
             exercise = c("normal", "mixture"))
for (dname in names(plan)) for (model in plan[[dname]]) {
  fits[[dname]][[model]] <- fit_one(dname, model)
}
# metaplus 1.0-8's t log-likelihood at the vignette's printed CDP estimates (the vignette was
# made with an older metaplus): shows which optimum is higher.
vignette_t_cdp <- c(muhat = 1.945e-01, tau2 = 4.504e-05, vinv = 2.023e+00)
negll_t <- fits$cdp$t$fit$fittedmodel@minuslogl
extra$loglik_t_cdp_at_vignette_estimates <- list(
  par = as.list(vignette_t_cdp), logLik = -negll_t(vignette_t_cdp, yi = cdp$yi, sei = cdp$sei))
write_json("fits")

# ---- stage 2: outlier tests, mixture (fast) then t (each refit integrates per study) ---------
for (dname in c("cdp", "mag")) tests[[dname]][["mixture"]] <- test_one(dname, "mixture", R_BOOT$mixture)
write_json("fits + mixture tests")
datasets$sim30 <- list(data = sim30, yi = sim30$yi, sei = sim30$sei, mods = NULL, slab = sim30$study)
fits[["sim30"]][["normal"]] <- fit_one("sim30", "normal")
fits[["sim30"]][["mixture"]] <- fit_one("sim30", "mixture")
timing$mixture_R999 <- test_one("sim30", "mixture", 999L)
write_json("fits + mixture tests + sim30 mixture timing")
for (dname in c("cdp", "mag")) {
  tests[[dname]][["t"]] <- test_one(dname, "t", R_BOOT$t)
  write_json(paste("fits + mixture tests + sim30 mixture timing + t test", dname))
}

# ---- stage 3: timing of the t outlier test on 30 studies (R = 19; 999 would take hours) -----
fits[["sim30"]][["t"]] <- fit_one("sim30", "t", justfit = TRUE)
timing$t_R19 <- test_one("sim30", "t", 19L, justfit = TRUE)
write_json("complete")
