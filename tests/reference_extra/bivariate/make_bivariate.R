# Bivariate meta-analysis with missing outcomes: metafor reference cases for drmpy.
#
# Regenerate (deterministic, set.seed(404)) from the repo root:
#   Rscript tests/reference_extra/bivariate/make_bivariate.R
#
# Needs R with metafor (>= 3.8) and jsonlite. Writes, next to this script:
#   data.csv  wide data, one row per study: study, x, y1, y2, v1, v2, cov12
#             (y1 = outcome A, y2 = outcome B; a missing outcome is NA, its
#             v1/v2/cov12 are kept as simulated)
#   V.csv     row-paired 2K x 2K sampling covariance (y1_1, y2_1, y1_2, ...),
#             no header, ALL studies, including the entries of missing outcomes
#   bivariate_missing_{int,mod}_{ml,reml}/case.json  (point to ../data.csv, ../V.csv)
#
# drmpy model: (y1_i, y2_i) ~ MVN((mu1_i, mu2_i), V_i + T),
#   T = [[s1^2, r s1 s2], [r s1 s2, s2^2]].
# metafor: long format, one row per OBSERVED outcome (study-major, A before B),
#   rma.mv(yi, Vlong, mods = ~ outcome - 1 [~ outcome + outcome:x - 1],
#          random = ~ outcome | study, struct = "UN", method = "ML"/"REML")
# with Vlong the matching rows/columns of V.csv.
#
# Every fit is checked before it is written (same scheme as ../make_cases.R):
#   1. nlminb (rel.tol 1e-12, 1e-10 fallback) and optim BFGS (reltol 1e-12)
#      must agree (logLik within 1e-8); Nelder-Mead is also run and reported;
#   2. theta = (log tau2_A, log tau2_B, atanh rho) is polished by Newton steps
#      on the directly computed profiled (RE)ML likelihood until |grad| < 1e-7,
#      and metafor is refitted with tau2 and rho fixed at the polished values;
#   3. metafor's logLik must equal the Gaussian log-likelihood computed here
#      directly, -0.5 (n log 2pi + log|S| + r'S^-1 r) with S = Vlong + Z T Z'
#      (ML; stored as expected.direct_loglik), or drmpy's REML logLik
#      + 0.5 log|X'X| (REML, X = stacked long design), to 1e-8; under ML it must
#      also equal the per-study sum over the wide data of the marginal density of
#      each study's observed outcomes, at the drmpy-scale coefficients.

suppressPackageStartupMessages({
  library(metafor)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = FALSE)
file_arg <- grep("^--file=", args, value = TRUE)
out_root <- if (length(file_arg)) dirname(normalizePath(sub("^--file=", "", file_arg[1]))) else
  file.path("tests", "reference_extra", "bivariate")

ctrl_nlminb <- list(optimizer = "nlminb", rel.tol = 1e-12, iter.max = 10000, eval.max = 20000)
ctrl_bfgs   <- list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-12, maxit = 10000)
ctrl_nm     <- list(optimizer = "optim", optmethod = "Nelder-Mead", reltol = 1e-14, maxit = 50000)

## 1. simulate ------------------------------------------------------------------
set.seed(404)
K <- 40
tau <- c(0.25, 0.4); rho_true <- 0.6
Tmat <- diag(tau) %*% matrix(c(1, rho_true, rho_true, 1), 2) %*% diag(tau)
x  <- round(rnorm(K), 6)
v1 <- round(runif(K, 0.01, 0.08), 6)
v2 <- round(runif(K, 0.01, 0.08), 6)
cov12 <- round(0.5 * sqrt(v1 * v2), 6)
mu1 <- 0.3 + 0.2 * x
mu2 <- -0.2 + 0.1 * x
u <- matrix(rnorm(2 * K), K, 2) %*% chol(Tmat)
e <- t(sapply(seq_len(K), function(i)
  drop(crossprod(chol(matrix(c(v1[i], cov12[i], cov12[i], v2[i]), 2)), rnorm(2)))))
y1 <- round(mu1 + u[, 1] + e[, 1], 6)
y2 <- round(mu2 + u[, 2] + e[, 2], 6)

## 2. missing outcomes: 8 studies lose y1, 6 other studies lose y2 -----------------
miss1 <- sort(sample(K, 8))
miss2 <- sort(sample(setdiff(seq_len(K), miss1), 6))
y1[miss1] <- NA
y2[miss2] <- NA

## 3. wide data.csv and row-paired V.csv -----------------------------------------
dat <- data.frame(study = seq_len(K), x = x, y1 = y1, y2 = y2, v1 = v1, v2 = v2, cov12 = cov12)
Vfull <- matrix(0, 2 * K, 2 * K)
for (i in seq_len(K)) {
  ix <- 2 * i - 1:0
  Vfull[ix, ix] <- matrix(c(v1[i], cov12[i], cov12[i], v2[i]), 2)
}
stopifnot(min(eigen(Vfull, symmetric = TRUE, only.values = TRUE)$values) > 0)
write.csv(dat, file.path(out_root, "data.csv"), row.names = FALSE)
write.table(Vfull, file.path(out_root, "V.csv"), sep = ",", row.names = FALSE, col.names = FALSE)
# round trip: the files hold exactly what is fitted
stopifnot(identical(read.csv(file.path(out_root, "data.csv")), dat),
          identical(unname(as.matrix(read.csv(file.path(out_root, "V.csv"), header = FALSE))), Vfull))

## 4. long format ------------------------------------------------------------------
long <- data.frame(study = rep(seq_len(K), each = 2), outcome = rep(c("A", "B"), K),
                   x = rep(x, each = 2), yi = as.vector(rbind(y1, y2)),
                   stringsAsFactors = FALSE)
keep <- !is.na(long$yi)
long <- long[keep, ]; rownames(long) <- NULL
long$outcome <- factor(long$outcome, levels = c("A", "B"))
Vlong <- Vfull[keep, keep]
n_long <- nrow(long)
stopifnot(n_long == 2 * K - 14)
ZA <- outer(long$study, seq_len(K), "==") * (long$outcome == "A")
ZB <- outer(long$study, seq_len(K), "==") * (long$outcome == "B")
build_S <- function(theta) {  # theta = (log tau2_A, log tau2_B, atanh rho)
  t2 <- exp(theta[1:2]); r <- tanh(theta[3])
  Vlong + t2[1] * tcrossprod(ZA) + t2[2] * tcrossprod(ZB) +
    r * sqrt(t2[1] * t2[2]) * (tcrossprod(ZA, ZB) + tcrossprod(ZB, ZA))
}

## direct log-likelihood of y ~ N(X beta, S), and drmpy's REML version (+ 0.5 log|X'X|)
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
profile_ll <- function(theta, y, X, method) {
  S <- build_S(theta)
  if (method == "REML") return(direct_loglik(y, X, S, NULL, "REML"))
  Si <- chol2inv(chol(S))
  beta <- solve(crossprod(X, Si %*% X), crossprod(X, Si %*% y))
  direct_loglik(y, X, S, beta, "ML")
}
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

## 5. fit, check, write -------------------------------------------------------------
make_case <- function(name, method, mods, formulas, model_note) {
  fit_with <- function(ctrl, tau2 = NULL, rho = NULL) {
    a <- list(yi = long$yi, V = Vlong, mods = mods, random = ~ outcome | study,
              struct = "UN", data = long, method = method, control = ctrl)
    if (!is.null(tau2)) { a$tau2 <- tau2; a$rho <- rho }
    do.call(rma.mv, a)
  }
  th_of <- function(f) c(log(f$tau2), atanh(f$rho))
  nlminb_rel_tol <- 1e-12
  f1 <- tryCatch(fit_with(ctrl_nlminb), error = function(e) {
    nlminb_rel_tol <<- 1e-10
    fit_with(modifyList(ctrl_nlminb, list(rel.tol = 1e-10)))
  })
  f2 <- fit_with(ctrl_bfgs)
  f3 <- fit_with(ctrl_nm)
  ll <- function(f) as.numeric(logLik(f))
  d_ll <- abs(ll(f1) - ll(f2)); d_ll_nm <- abs(ll(f1) - ll(f3))
  d_th <- max(abs(th_of(f1) - th_of(f2))); d_th_nm <- max(abs(th_of(f1) - th_of(f3)))
  best <- if (ll(f2) > ll(f1)) f2 else f1
  if (d_ll > 1e-8 || d_th > 1e-3) stop(name, ": nlminb and BFGS disagree")
  if (any(best$tau2 < 1e-3) || abs(best$rho) > 0.99) stop(name, ": boundary estimate")

  X <- model.matrix(mods, data = long)
  pol <- newton_polish(th_of(best), function(th) profile_ll(th, long$yi, X, method))
  fit <- fit_with(ctrl_nlminb, tau2 = exp(pol$theta[1:2]), rho = tanh(pol$theta[3]))
  stopifnot(identical(colnames(X), names(coef(fit))))
  gain <- ll(fit) - ll(best)
  d_pol <- max(abs(th_of(fit) - th_of(best)))
  S <- build_S(th_of(fit))
  ll_direct <- direct_loglik(long$yi, X, S, coef(fit), method)
  d_direct <- abs(ll_direct - ll(fit))
  cat(sprintf(paste0("%-28s logLik %.10f | nlminb-BFGS ll %.1e theta %.1e | nlminb-NM ll %.1e theta %.1e | ",
                     "polish gain %.1e moved %.1e |grad| %.1e iters %d | |direct| %.1e\n"),
              name, ll(fit), d_ll, d_th, d_ll_nm, d_th_nm, gain, d_pol, max(abs(pol$grad)),
              pol$iter, d_direct))
  if (!pol$negdef || gain < -1e-10 || d_pol > 1e-3 || max(abs(pol$grad)) > 1e-7)
    stop(name, ": Newton polish failed")
  if (d_direct > 1e-8) stop(name, ": metafor logLik does not match the direct computation")

  b <- coef(fit)
  half_logdet_XtX <- 0.5 * as.numeric(determinant(crossprod(X))$modulus)
  coef_mu <- function(o) {
    v <- c("(Intercept)" = unname(b[paste0("outcome", o)]))
    if (paste0("outcome", o, ":x") %in% names(b)) v["x"] <- unname(b[paste0("outcome", o, ":x")])
    as.list(v)
  }
  coef_drmpy <- list(
    mu1 = coef_mu("A"), mu2 = coef_mu("B"),
    sigma1 = list("(Intercept)" = 0.5 * log(fit$tau2[1])),
    sigma2 = list("(Intercept)" = 0.5 * log(fit$tau2[2])),
    rho12  = list("(Intercept)" = atanh(fit$rho / 0.999999)))
  trans <- sprintf(paste0(" drmpy scale: sigma1 = log(sqrt(tau2[1])) = %.10f, sigma2 = log(sqrt(tau2[2])) = %.10f, ",
                          "rho12 link = atanh(rho/0.999999) = %.10f (coef_drmpy holds these and mu1/mu2 from beta)."),
                  coef_drmpy$sigma1[[1]], coef_drmpy$sigma2[[1]], coef_drmpy$rho12[[1]])
  meth_note <- if (method == "ML") {
    paste0(" ML: logLik is the plain Gaussian marginal log-likelihood of the observed outcomes (= drmpy's); ",
           "direct_loglik recomputes it in R as -0.5(n log 2pi + log|S| + r'S^-1 r). metafor se_beta is ",
           "sqrt(diag((X'S^-1X)^-1)) (beta block of the expected information).")
  } else {
    paste0(" REML: metafor logLik = drmpy REML logLik + 0.5 log|X'X| of the stacked long design X ",
           "(loglik_drmpy, half_logdet_XtX). beta is the exact GLS estimate at the REML variance parameters; ",
           "se_beta is sqrt(diag((X'S^-1X)^-1)) without drmTMB's delta-method term.")
  }
  notes <- paste0(
    "Simulated bivariate meta-analysis (set.seed(404)): K = 40 studies, outcome A = y1, B = y2; ",
    "8 studies miss y1 (", paste(miss1, collapse = ","), "), 6 other studies miss y2 (",
    paste(miss2, collapse = ","), "); NA in data.csv, V.csv keeps all 2K rows (row-paired, values as simulated). ",
    "metafor long format: one row per observed outcome (", n_long, " rows, study-major, A before B), ",
    "rma.mv(yi, Vlong, mods = ", model_note, ", random = ~ outcome | study, struct = \"UN\"), ",
    "Vlong = rows/cols of V.csv for observed outcomes. tau2 = (tau2_A, tau2_B) = (sigma1^2, sigma2^2), rho = rho12.",
    trans, meth_note)

  met <- list(
    loglik = ll(fit),
    beta = as.list(b),
    se_beta = as.list(setNames(fit$se, names(b))),
    sigma2 = 0,
    tau2 = I(fit$tau2),
    rho = fit$rho,
    coef_drmpy = coef_drmpy,
    nobs_long = n_long,
    n_studies = K,
    n_missing = list(y1 = length(miss1), y2 = length(miss2)))
  if (method == "REML") {
    met$loglik_drmpy <- ll(fit) - half_logdet_XtX
    met$half_logdet_XtX <- half_logdet_XtX
  }
  met$converged <- TRUE
  met$check <- list(nlminb_rel_tol = nlminb_rel_tol,
                    abs_loglik_nlminb_vs_bfgs = d_ll, max_abs_theta_nlminb_vs_bfgs = d_th,
                    abs_loglik_nlminb_vs_neldermead = d_ll_nm, max_abs_theta_nlminb_vs_neldermead = d_th_nm,
                    loglik_gain_newton_polish = gain, max_abs_grad_theta = max(abs(pol$grad)),
                    abs_loglik_vs_direct = d_direct)
  # ML: the same log-likelihood summed study by study from the WIDE data, with the
  # drmpy-scale coefficients mapped back (rho = 0.999999 tanh(rho12)): the marginal
  # density of each study's observed sub-vector of (y1, y2)
  if (method == "ML") {
    s1 <- exp(coef_drmpy$sigma1[[1]]); s2 <- exp(coef_drmpy$sigma2[[1]])
    r12 <- 0.999999 * tanh(coef_drmpy$rho12[[1]])
    lin <- function(cf) rep(cf[["(Intercept)"]], K) + if (is.null(cf$x)) 0 else cf$x * dat$x
    m1 <- lin(coef_drmpy$mu1); m2 <- lin(coef_drmpy$mu2)
    ll_wide <- sum(sapply(seq_len(K), function(i) {
      obs <- !is.na(c(dat$y1[i], dat$y2[i]))
      Si <- matrix(c(dat$v1[i] + s1^2, dat$cov12[i] + r12 * s1 * s2,
                     dat$cov12[i] + r12 * s1 * s2, dat$v2[i] + s2^2), 2)[obs, obs, drop = FALSE]
      r <- (c(dat$y1[i], dat$y2[i]) - c(m1[i], m2[i]))[obs]
      -0.5 * (sum(obs) * log(2 * pi) + as.numeric(determinant(Si)$modulus) + drop(r %*% solve(Si, r)))
    }))
    d_wide <- abs(ll_wide - ll(fit))
    cat(sprintf("%-28s |metafor - wide per-study loglik| %.1e\n", "", d_wide))
    if (d_wide > 1e-8) stop(name, ": wide per-study loglik disagrees")
    met$check$abs_loglik_vs_wide_per_study <- d_wide
  }
  expected <- list(metafor = met)
  if (method == "ML") expected$direct_loglik <- ll_direct
  case <- list(
    name = name,
    family = "biv_gaussian",
    method = method,
    formulas = formulas,
    V_matrix = TRUE,
    data = "../data.csv",
    V = "../V.csv",
    notes = notes,
    expected = expected)
  dir <- file.path(out_root, name)
  dir.create(dir, showWarnings = FALSE, recursive = TRUE)
  writeLines(toJSON(case, auto_unbox = TRUE, pretty = TRUE, digits = NA),
             file.path(dir, "case.json"))
  invisible(fit)
}

for (m in c("ML", "REML")) {
  make_case(paste0("bivariate_missing_int_", tolower(m)), m, mods = ~ outcome - 1,
            formulas = list(mu1 = "y1 ~ 1 + meta_V(V=V)", mu2 = "y2 ~ 1"),
            model_note = "~ outcome - 1")
  make_case(paste0("bivariate_missing_mod_", tolower(m)), m, mods = ~ outcome + outcome:x - 1,
            formulas = list(mu1 = "y1 ~ x + meta_V(V=V)", mu2 = "y2 ~ x"),
            model_note = "~ outcome + outcome:x - 1")
}

cat("metafor", as.character(packageVersion("metafor")), "| jsonlite", as.character(packageVersion("jsonlite")),
    "|", R.version.string, "\n")
