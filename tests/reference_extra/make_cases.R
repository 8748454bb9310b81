# Extra metafor reference cases for drmpy random-effect models.
#
# Regenerate everything (deterministic, set.seed per case) from the repo root:
#   Rscript tests/reference_extra/make_cases.R
#
# Needs R with metafor (>= 3.8) and jsonlite. Each case folder gets data.csv,
# optionally K.csv (relatedness matrix) / V.csv (dense sampling covariance),
# and case.json in the format of the shared reference cases, with only
# expected.metafor filled in. Every fit is checked before it is written:
#   1. nlminb (rel.tol 1e-12, or 1e-10 if nlminb reports false convergence)
#      and optim BFGS (reltol 1e-12) must agree (logLik within 1e-8);
#   2. the variance components are then polished by Newton steps on the log
#      scale (numerical derivatives of the direct likelihood below) until the
#      gradient is < 1e-7, and metafor is refitted with sigma2 fixed at the
#      polished values, so its beta / se / logLik are reported at an optimum
#      accurate to ~1e-9 in the parameters, not just in the logLik;
#   3. metafor's logLik must equal the Gaussian marginal log-likelihood
#      computed here directly from the dense S = V + sum Z G Z' (ML), or
#      drmpy's REML log-likelihood + 0.5 log|X'X| (REML), to 1e-8.

suppressPackageStartupMessages({
  library(metafor)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = FALSE)
file_arg <- grep("^--file=", args, value = TRUE)
out_root <- if (length(file_arg)) dirname(normalizePath(sub("^--file=", "", file_arg[1]))) else
  file.path("tests", "reference_extra")

ctrl_nlminb <- list(optimizer = "nlminb", rel.tol = 1e-12, iter.max = 1000, eval.max = 5000)
ctrl_bfgs   <- list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-12, maxit = 5000)

pad <- function(prefix, i, width = 2) sprintf(paste0("%s%0", width, "d"), prefix, i)

## direct log-likelihood of y ~ N(X beta, S), and drmpy's REML version ----------
direct_loglik <- function(y, X, S, beta, method) {
  n <- length(y); p <- ncol(X)
  L <- chol(S)
  logdetS <- 2 * sum(log(diag(L)))
  if (method == "ML") {
    r <- y - X %*% beta
    q <- sum(backsolve(L, r, transpose = TRUE)^2)
    return(-0.5 * (n * log(2 * pi) + logdetS + q))
  }
  Si <- chol2inv(L)
  XtSiX <- crossprod(X, Si %*% X)
  bhat <- solve(XtSiX, crossprod(X, Si %*% y))
  r <- y - X %*% bhat
  q <- drop(crossprod(r, Si %*% r))
  ll_drmpy <- -0.5 * ((n - p) * log(2 * pi) + logdetS +
                        as.numeric(determinant(XtSiX)$modulus) + q)
  ll_drmpy + 0.5 * as.numeric(determinant(crossprod(X))$modulus)
}

## profiled (RE)ML log-likelihood as a function of log variance components ----
profile_ll <- function(theta, y, X, build_S, method) {
  S <- build_S(exp(theta))
  if (method == "REML") return(direct_loglik(y, X, S, NULL, "REML"))
  Si <- chol2inv(chol(S))
  beta <- solve(crossprod(X, Si %*% X), crossprod(X, Si %*% y))
  direct_loglik(y, X, S, beta, "ML")
}

## Newton polish of the log variance components on the direct likelihood -------
newton_polish <- function(theta, f, tol = 1e-9, maxit = 50) {
  k <- length(theta)
  num_grad <- function(th, h = 1e-4) sapply(seq_len(k), function(j) {
    e <- replace(numeric(k), j, h); (f(th + e) - f(th - e)) / (2 * h)
  })
  num_hess <- function(th, h = 1e-3) {
    H <- matrix(0, k, k)
    for (i in seq_len(k)) for (j in seq_len(k)) {
      ei <- replace(numeric(k), i, h); ej <- replace(numeric(k), j, h)
      H[i, j] <- (f(th + ei + ej) - f(th + ei - ej) - f(th - ei + ej) + f(th - ei - ej)) / (4 * h^2)
    }
    (H + t(H)) / 2
  }
  for (it in seq_len(maxit)) {
    g <- num_grad(theta); H <- num_hess(theta)
    step <- -solve(H, g)
    theta <- theta + step
    if (max(abs(step)) < tol) break
  }
  list(theta = theta, grad = num_grad(theta), iter = it,
       negdef = all(eigen(num_hess(theta), symmetric = TRUE, only.values = TRUE)$values < 0))
}

## fit with two optimisers, polish, check, and write the case -------------------
make_case <- function(name, method, dat, V, random, R = NULL, formulas, notes,
                      sd_names, K = NULL, write_V = FALSE, build_S) {
  fit_with <- function(ctrl, sigma2 = NULL) {
    a <- list(yi = dat$yi, V = V, mods = ~ x, random = random, data = dat,
              method = method, control = ctrl)
    if (!is.null(R)) a$R <- R
    if (!is.null(sigma2)) a$sigma2 <- sigma2
    do.call(rma.mv, a)
  }
  # nlminb at rel.tol 1e-12 sometimes stops with "false convergence"; fall back to 1e-10
  nlminb_rel_tol <- 1e-12
  f1 <- tryCatch(fit_with(ctrl_nlminb), error = function(e) {
    nlminb_rel_tol <<- 1e-10
    fit_with(modifyList(ctrl_nlminb, list(rel.tol = 1e-10)))
  })
  f2 <- fit_with(ctrl_bfgs)
  d_ll <- abs(as.numeric(logLik(f1)) - as.numeric(logLik(f2)))
  d_s2 <- max(abs(f1$sigma2 - f2$sigma2) / pmax(f1$sigma2, 1e-8))
  best <- if (as.numeric(logLik(f2)) > as.numeric(logLik(f1))) f2 else f1
  if (d_ll > 1e-8 || d_s2 > 1e-4) stop(name, ": optimisers disagree")
  if (any(best$sigma2 < 1e-4)) stop(name, ": a variance component is near zero")

  # polish the variance components with Newton steps on the direct likelihood,
  # then let metafor evaluate everything at the polished values (sigma2 fixed)
  X <- model.matrix(~ x, data = dat)
  pol <- newton_polish(log(best$sigma2),
                       function(th) profile_ll(th, dat$yi, X, build_S, method))
  fit <- fit_with(ctrl_nlminb, sigma2 = exp(pol$theta))
  gain <- as.numeric(logLik(fit)) - as.numeric(logLik(best))
  d_pol <- max(abs(fit$sigma2 - best$sigma2) / best$sigma2)
  S <- build_S(fit$sigma2)
  ll_direct <- direct_loglik(dat$yi, X, S, coef(fit), method)
  d_direct <- abs(ll_direct - as.numeric(logLik(fit)))
  cat(sprintf(paste0("%-22s logLik %.10f |nlminb-BFGS| ll %.1e s2(rel) %.1e | polish: gain %.1e ",
                     "moved %.1e |grad| %.1e iters %d | |direct| %.1e\n"),
              name, as.numeric(logLik(fit)), d_ll, d_s2, gain, d_pol, max(abs(pol$grad)),
              pol$iter, d_direct))
  if (!pol$negdef || gain < -1e-10 || d_pol > 1e-4 || max(abs(pol$grad)) > 1e-7)
    stop(name, ": Newton polish failed")
  if (d_direct > 1e-8) stop(name, ": metafor logLik does not match the direct computation")

  half_logdet_XtX <- 0.5 * as.numeric(determinant(crossprod(X))$modulus)
  ll <- as.numeric(logLik(fit))
  sdp <- as.list(setNames(sqrt(fit$sigma2), sd_names))
  case <- list(
    name = name,
    family = "gaussian",
    method = method,
    formulas = I(formulas),
    V_matrix = write_V,
    K_matrix = !is.null(K),
    notes = notes,
    expected = list(
      metafor = list(
        loglik = ll,
        beta = as.list(coef(fit)),
        se_beta = as.list(setNames(fit$se, names(coef(fit)))),
        sigma2 = I(fit$sigma2),
        tau2 = 0,
        rho = 0,
        sdpars_metafor = sdp,
        loglik_drmpy = if (method == "REML") ll - half_logdet_XtX else ll,
        half_logdet_XtX = half_logdet_XtX,
        nobs = nrow(dat),
        converged = TRUE,
        check = list(nlminb_rel_tol = nlminb_rel_tol, abs_loglik_nlminb_vs_bfgs = d_ll, loglik_gain_newton_polish = gain,
                     max_abs_grad_log_sigma2 = max(abs(pol$grad)),
                     abs_loglik_vs_direct = d_direct)
      )
    )
  )
  dir <- file.path(out_root, name)
  dir.create(dir, showWarnings = FALSE, recursive = TRUE)
  write.csv(dat, file.path(dir, "data.csv"), row.names = FALSE)
  if (write_V) write.table(V, file.path(dir, "V.csv"), sep = ",", row.names = FALSE,
                           col.names = FALSE)
  if (!is.null(K)) write.csv(K, file.path(dir, "K.csv"))
  writeLines(toJSON(case, auto_unbox = TRUE, pretty = TRUE, digits = NA),
             file.path(dir, "case.json"))
  invisible(fit)
}

reml_note <- paste0(" REML: metafor logLik = drmpy REML logLik + 0.5 log|X'X| ",
                    "(X = [1, x]); loglik_drmpy holds the drmpy value and half_logdet_XtX the offset. ",
                    "metafor se_beta is (X'S^-1X)^-1 at the estimates (no delta-method term).")
ml_note <- paste0(" ML: logLik is the plain Gaussian marginal log-likelihood, same as drmpy's. ",
                  "metafor se_beta comes from the expected information (beta block only); ",
                  "drmpy's observed-information SEs may differ slightly.")

## 1. crossed: 15 studies x 10 species, not nested ------------------------------
set.seed(101)
n_study <- 15; n_sp <- 10; per_study <- 8
study <- rep(seq_len(n_study), each = per_study)
species <- unlist(lapply(seq_len(n_study), function(i) sample(n_sp, per_study)))
n <- length(study)
x <- round(rnorm(n), 6)
vi <- round(runif(n, 0.02, 0.05), 6)
u_st <- rnorm(n_study, 0, 0.4); u_sp <- rnorm(n_sp, 0, 0.3)
yi <- round(0.2 + 0.3 * x + u_st[study] + u_sp[species] + rnorm(n, 0, 0.3) + rnorm(n, 0, sqrt(vi)), 6)
dat_crossed <- data.frame(esid = seq_len(n), study = pad("s", study), species = pad("sp", species),
                          x = x, vi = vi, yi = yi, stringsAsFactors = FALSE)
Zst <- model.matrix(~ 0 + factor(study), dat_crossed)
Zsp <- model.matrix(~ 0 + factor(species), dat_crossed)
for (m in c("ML", "REML")) {
  make_case(
    name = paste0("crossed_", tolower(m)), method = m, dat = dat_crossed, V = dat_crossed$vi,
    random = list(~ 1 | study, ~ 1 | species, ~ 1 | esid),
    formulas = "yi ~ x + (1|study) + (1|species) + meta_V(V=vi)",
    notes = paste0("Crossed random intercepts: 120 rows, 15 studies x 10 species (8 distinct species per study). ",
                   "metafor rma.mv(yi, vi, mods = ~ x, random = list(~1|study, ~1|species, ~1|esid)); ",
                   "sigma2 = (study, species, esid) variances: sd(study)^2, sd(species)^2, and drmpy's row-level sigma^2.",
                   if (m == "ML") ml_note else reml_note),
    sd_names = c("sd(study)", "sd(species)", "sigma"),
    build_S = function(s2) diag(dat_crossed$vi + s2[3]) + s2[1] * tcrossprod(Zst) + s2[2] * tcrossprod(Zsp))
}

## 2. relmat: 12 species with a known correlation matrix K ----------------------
set.seed(202)
n_sp <- 12; n <- 100
sp_lab <- pad("sp", seq_len(n_sp))
coords <- matrix(runif(2 * n_sp), ncol = 2)
K <- exp(-as.matrix(dist(coords)) / 0.4)   # exponential kernel: valid correlation matrix
K <- round(K, 10); diag(K) <- 1
dimnames(K) <- list(sp_lab, sp_lab)
stopifnot(min(eigen(K, symmetric = TRUE, only.values = TRUE)$values) > 1e-6)
species <- sample(rep(seq_len(n_sp), length.out = n))
x <- round(rnorm(n), 6)
vi <- round(runif(n, 0.02, 0.05), 6)
u_sp <- drop(crossprod(chol(K), rnorm(n_sp))) * 0.5
yi <- round(0.2 + 0.3 * x + u_sp[species] + rnorm(n, 0, 0.3) + rnorm(n, 0, sqrt(vi)), 6)
dat_relmat <- data.frame(esid = seq_len(n), species = sp_lab[species], x = x, vi = vi, yi = yi,
                         stringsAsFactors = FALSE)
Zsp <- model.matrix(~ 0 + factor(species, levels = sp_lab), dat_relmat)
for (m in c("ML", "REML")) {
  make_case(
    name = paste0("relmat_", tolower(m)), method = m, dat = dat_relmat, V = dat_relmat$vi,
    random = list(~ 1 | species, ~ 1 | esid), R = list(species = K), K = K,
    formulas = "yi ~ x + relmat(1|species, K=K) + meta_V(V=vi)",
    notes = paste0("Relatedness matrix: 100 rows over 12 species; K.csv (header row and first column = species labels) ",
                   "is a correlation matrix exp(-d/0.4) of random 2-D coordinates. metafor ",
                   "rma.mv(yi, vi, mods = ~ x, random = list(~1|species, ~1|esid), R = list(species = K)); ",
                   "sigma2 = (species, esid): the relmat variance sd(species)^2 (G = sd(species)^2 K) and drmpy's row-level sigma^2. ",
                   "There is no separate non-relmat species effect.",
                   if (m == "ML") ml_note else reml_note),
    sd_names = c("sd(species)", "sigma"),
    build_S = function(s2) diag(dat_relmat$vi + s2[2]) + s2[1] * Zsp %*% K %*% t(Zsp))
}

## 3. nested_denseV: 60 rows in 12 studies, dense block-diagonal V ---------------
set.seed(303)
n_study <- 12; per_study <- 5; n <- n_study * per_study
study <- rep(seq_len(n_study), each = per_study)
x <- round(rnorm(n), 6)
vi <- round(runif(n, 0.02, 0.05), 6)
V <- 0.5 * sqrt(outer(vi, vi)) * outer(study, study, "==")
diag(V) <- vi
V <- signif(V, 15)   # exactly what write.table puts in V.csv
u_st <- rnorm(n_study, 0, 0.4)
e_samp <- unlist(lapply(split(seq_len(n), study), function(ix) drop(crossprod(chol(V[ix, ix]), rnorm(length(ix))))))
yi <- round(0.2 + 0.3 * x + u_st[study] + rnorm(n, 0, 0.3) + e_samp, 6)
dat_dense <- data.frame(esid = seq_len(n), study = pad("s", study), x = x, vi = vi, yi = yi,
                        stringsAsFactors = FALSE)
Zst <- model.matrix(~ 0 + factor(study), dat_dense)
for (m in c("ML", "REML")) {
  make_case(
    name = paste0("nested_denseV_", tolower(m)), method = m, dat = dat_dense, V = V,
    random = list(~ 1 | study, ~ 1 | esid), write_V = TRUE,
    formulas = "yi ~ x + (1|study) + meta_V(V=V)",
    notes = paste0("Dense V: 60 rows in 12 studies of 5; V.csv (no header, rows in data order) is block-diagonal by study ",
                   "with sampling correlation 0.5 within study (V_ij = 0.5 sqrt(vi vj)); diag(V) = vi. metafor ",
                   "rma.mv(yi, V, mods = ~ x, random = list(~1|study, ~1|esid)); sigma2 = (study, esid): ",
                   "sd(study)^2 and drmpy's row-level sigma^2.",
                   if (m == "ML") ml_note else reml_note),
    sd_names = c("sd(study)", "sigma"),
    build_S = function(s2) V + diag(s2[2], n) + s2[1] * tcrossprod(Zst))
}

## 4. slope_uncorrelated: not made. drmpy's engine (ENGINE.md) has only (1|g) and
## relmat(1|g) random effects, and rma.mv has no direct "(1|g) + (0 + x|g)"
## structure for a continuous x (struct = "GEN" with rho fixed at 0 would be the route).

cat("metafor", as.character(packageVersion("metafor")), "|", R.version.string, "\n")
