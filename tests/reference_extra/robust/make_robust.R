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
R_BOOT <- list(mixture = 999L, t = 999L)  # testOutliers bootstrap sizes (metaplus default)

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

# ---- exact t likelihood (an independent check of metaplus's quadrature) -------------------------
# Exact marginal log-likelihood of the t random-effects model (metaplus's parameterisation):
# y_i = mu + u_i + e_i, e_i ~ N(0, sei^2), u_i = sqrt(tau2) * T_i, T_i ~ t with 1/vinv df.
# Integrated by integrate() over pieces split at the t density's spike (u = 0, width sqrt(tau2))
# and at the normal kernel's centre (u = y - mu), which metaplus's single integrate() call over
# y - mu +- 12 sei lacks.
exact_t_loglik <- function(mu, tau2, vinv, yi, sei) {
  if (vinv == 0) return(sum(dnorm(yi, mu, sqrt(tau2 + sei^2), log = TRUE)))
  s <- sqrt(tau2); nu <- 1 / vinv
  one <- function(y, se) {
    c0 <- y - mu
    f <- function(u) dnorm(u, c0, se) * dt(u / s, nu) / s
    knots <- sort(unique(c(0, s * c(-1e3, -1e2, -10, -1, 1, 10, 1e2, 1e3),
                           c0 + se * c(-12, -4, -1, 0, 1, 4, 12))))
    edges <- c(-Inf, knots, Inf)
    total <- 0
    for (j in seq_len(length(edges) - 1)) {
      total <- total + integrate(f, edges[j], edges[j + 1], rel.tol = 1e-12, abs.tol = 0,
                                 subdivisions = 1000L)$value
    }
    log(total)
  }
  sum(mapply(one, yi, sei))
}
exact_t_mle <- function(start, yi, sei) {
  negll <- function(p) -exact_t_loglik(p[1], exp(p[2]), exp(p[3]), yi, sei)
  opt <- nlminb(c(start[["muhat"]], log(start[["tau2"]]), log(start[["vinv"]])), negll,
                control = list(rel.tol = 1e-14, x.tol = 1e-12, eval.max = 2000, iter.max = 1000))
  list(muhat = opt$par[1], tau2 = exp(opt$par[2]), vinv = exp(opt$par[3]), logLik = -opt$objective,
       convergence = opt$convergence, message = opt$message)
}


# ---- the vignette's printed numbers (metaplus vignette, "metaplus-package.pdf", R Journal
# style; text extracted from inst/doc of the 1.0-8 tarball), and whether 1.0-8 reproduces them
# to the printed digits. Values are the printed strings; "stat" is testOutliers' LRT statistic.
vignette <- list(
  mag = list(
    normal = list(muhat = "-0.7463", muhat_lb = "-1.2583", muhat_ub = "-0.3428", muhat_p = "0.000501",
                  tau2 = "0.2540", logLik = "-19.68459", AIC = "43.36918", BIC = "44.91436"),
    t = list(muhat = "-0.7463", muhat_lb = "-1.2583", muhat_ub = "-0.3430", muhat_p = "0.000501",
             tau2 = "0.2540", vinv = "0.0000", logLik = "-19.68459", AIC = "45.36918", BIC = "47.68695",
             stat = "0.0", pvalue = "1"),
    mixture = list(muhat = "-0.7463152", muhat_lb = "-1.2581689", muhat_ub = "-0.3435347",
                   muhat_p = "0.000501", tau2 = "0.2539984", tau2out = "0.2539985",
                   p_outlier = "0.0006075", logLik = "-19.68459", AIC = "47.36918", BIC = "50.45954",
                   stat = "0.0", pvalue = "1")),
  cdp = list(
    normal = list(muhat = "0.38944", muhat_lb = "0.07269", muhat_ub = "0.76634", muhat_p = "0.0218",
                  tau2 = "0.14666", logLik = "-8.198544", AIC = "20.39709", BIC = "21.00226"),
    t = list(muhat = "1.945e-01", muhat_lb = "5.294e-02", muhat_ub = "3.611e-01", muhat_p = "0.00899",
             tau2 = "4.504e-05", vinv = "2.023e+00", logLik = "-4.058334", AIC = "14.11667",
             BIC = "15.02442", stat = "8.3", pvalue = "0.001"),
    mixture = list(muhat = "0.1910", muhat_lb = "0.0563", muhat_ub = "0.3479", muhat_p = "0.00711",
                   tau2 = "0.0000", tau2out = "3.1558", p_outlier = "0.1237", logLik = "-3.007145",
                   AIC = "14.01429", BIC = "15.22463", stat = "10.4", pvalue = "0.001")),
  exercise = list(
    normal = list(muhat = "-2.8994", muhat_lb = "-4.3006", muhat_ub = "-1.5222", muhat_p = "0.000884",
                  tau2 = "0.1171", duration = "0.2078", duration_lb = "0.0584", duration_ub = "0.3632",
                  duration_p = "0.011570", logLik = "-8.133435", AIC = "22.26687", BIC = "23.17462"),
    mixture = list(muhat = "-2.88472", muhat_lb = "-4.10690", muhat_ub = "-1.48262",
                   muhat_p = "0.000649", tau2 = "0.00000", tau2out = "0.59398",
                   p_outlier = "0.25169", duration = "0.21086", duration_lb = "0.07824",
                   duration_ub = "0.34581", duration_p = "0.007123", logLik = "-7.69139",
                   AIC = "25.38278", BIC = "26.8957", stat = "0.9", pvalue = "0.05")))

# metaplus 1.0-8's value of a printed quantity, from a fit (and its outlier test, if run)
value_of <- function(fit, test, key) {
  row_of <- function(name) fit$results[[name]]
  switch(key,
    logLik = fit$logLik, AIC = fit$AIC, BIC = fit$BIC,
    p_outlier = fit$p_outlier,
    stat = if (is.null(test)) NA else test$observed,
    pvalue = if (is.null(test)) NA else test$pvalue,
    {
      parts <- strsplit(key, "_")[[1]]
      row <- row_of(parts[1])
      if (length(parts) == 1) row$est
      else switch(parts[2], lb = row$ci_lb, ub = row$ci_ub, p = row$pvalue)
    })
}
# printed to the same digits (decimals, or significant digits in e-notation; R's print of a
# p value < 1e-3 uses significant digits, which decimals cover here)
same_digits <- function(value, printed) {
  if (is.null(value) || is.na(value)) return(NA)
  if (grepl("e", printed)) {
    digits <- nchar(sub("e.*", "", sub("^-?[0-9]\\.", "", printed)))
    return(formatC(value, digits = digits, format = "e") == printed)
  }
  decimals <- if (grepl("\\.", printed)) nchar(sub(".*\\.", "", printed)) else 0
  text <- formatC(value, digits = decimals, format = "f")
  text <- sub("^-(0\\.?0*)$", "\\1", text)  # R prints -0.0000 as 0.0000
  text == printed
}
compare_vignette <- function() {
  out <- list()
  for (dname in names(vignette)) for (model in names(vignette[[dname]])) {
    fit <- fits[[dname]][[model]]
    test <- tests[[dname]][[model]]
    printed <- vignette[[dname]][[model]]
    out[[dname]][[model]] <- lapply(names(printed), function(key) {
      value <- value_of(fit, test, key)
      list(quantity = key, vignette = printed[[key]], metaplus_1.0_8 = value,
           same_to_printed_digits = same_digits(value, printed[[key]]))
    })
  }
  out
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
    vignette_comparison = if (length(fits)) compare_vignette() else NULL,
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
# the exact log-likelihood at metaplus's estimate and at the vignette's, and the exact maximum
# (started from metaplus's estimate; log tau2 and log vinv unconstrained)
t_cdp <- fits$cdp$t$coef
extra$exact_t_cdp <- list(
  method = paste("integrate() over pieces split at u = 0 (+-1, 10, 100, 1000 sqrt(tau2)) and",
                 "at u = y - mu (+-1, 4, 12 sei), rel.tol 1e-12; nlminb on (mu, log tau2, log vinv)"),
  loglik_at_metaplus_estimate = exact_t_loglik(t_cdp$muhat, t_cdp$tau2, t_cdp$vinv, cdp$yi, cdp$sei),
  loglik_at_vignette_estimate = exact_t_loglik(vignette_t_cdp[["muhat"]], vignette_t_cdp[["tau2"]],
                                               vignette_t_cdp[["vinv"]], cdp$yi, cdp$sei),
  mle = exact_t_mle(t_cdp, cdp$yi, cdp$sei))
extra$exact_t_mag_loglik_at_metaplus_estimate <- with(fits$mag$t$coef,
  exact_t_loglik(muhat, tau2, vinv, mag$yi, mag$sei))
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

# ---- stage 3: timing of the t outlier test on 30 studies: R = 19 first (a quick rate), then the
# full R = 999 (about half an hour on the shared 2-core machine) ------------------------------
fits[["sim30"]][["t"]] <- fit_one("sim30", "t", justfit = TRUE)
timing$t_R19 <- test_one("sim30", "t", 19L, justfit = TRUE)
write_json("all but the sim30 t test with R = 999")
timing$t_R999 <- test_one("sim30", "t", 999L, justfit = TRUE)
write_json("complete")
