# Reference sampling covariances (metafor 3.8-1 vcalc; shared control groups as in the
# metafor documentation's calc.v for Gleser & Olkin 2009 and Lajeunesse 2011 for lnRR)
# and a three-level rma.mv fit on a vcalc V.
# Run from this folder: Rscript vcalc_cases.R  -> vcalc_cases.json
suppressMessages({library(metafor); library(metadat); library(jsonlite)})

dat <- dat.assink2016
dat$row <- seq_len(nrow(dat))
dat$outcome <- dat$deltype   # an obs label shared by some rows of a study
triplets <- function(V) {
  nz <- which(V != 0, arr.ind = TRUE)
  list(i = nz[, 1] - 1, j = nz[, 2] - 1, x = V[nz])
}
# (obs = outcome correlates same-outcome rows of a study at 1: vcalc warns that those blocks are
# not positive definite; the matrices are still what vcalc returns)
cases <- list(
  rowobs_rho05 = vcalc(vi, cluster = study, obs = row, rho = 0.5, data = dat),
  rowobs_rho08 = vcalc(vi, cluster = study, obs = row, rho = 0.8, data = dat),
  outcome_rho06 = vcalc(vi, cluster = study, obs = outcome, rho = 0.6, data = dat),
  time_rowobs_rho05_phi09 = vcalc(vi, cluster = study, obs = row, rho = 0.5, time1 = esid, phi = 0.9, data = dat),
  time_outcome_rho07_phi05 = vcalc(vi, cluster = study, obs = outcome, rho = 0.7, time1 = year, phi = 0.5, data = dat)
)
vcalc_out <- lapply(cases, triplets)

# three-level model on V(rho = 0.5): REML and ML, intercept-only and with a moderator
V <- cases$rowobs_rho05
fits <- list()
for (method in c("REML", "ML")) {
  for (mods in c("~ 1", "~ deltype")) {
    f <- rma.mv(yi, V, mods = as.formula(mods), random = ~ 1 | study / esid, data = dat, method = method)
    X <- model.matrix(f)
    fits[[length(fits) + 1]] <- list(method = method, mods = mods, loglik = as.numeric(logLik(f)),
      beta = as.numeric(f$beta), se = as.numeric(f$se), sigma2 = f$sigma2,
      half_logdet_XtX = 0.5 * as.numeric(determinant(crossprod(X))$modulus))
  }
}

# the README's worked example: curtis1998 lnRR, V from vcalc(rho = 0.5) within paper, three levels
cu <- escalc("ROM", m1i = m1i, sd1i = sd1i, n1i = n1i, m2i = m2i, sd2i = sd2i, n2i = n2i, data = dat.curtis1998)
cu$row <- seq_len(nrow(cu))   # obs = row number (vcalc indexes its rho matrix by numeric obs as positions)
Vcu <- vcalc(vi, cluster = paper, obs = row, rho = 0.5, data = cu)
fcu <- rma.mv(yi, Vcu, mods = ~ fungrp, random = ~ 1 | paper / id, data = cu, method = "REML")
curtis_fit <- list(method = "REML", mods = "~ fungrp", loglik = as.numeric(logLik(fcu)),
                   beta = as.numeric(fcu$beta), se = as.numeric(fcu$se), sigma2 = fcu$sigma2,
                   half_logdet_XtX = 0.5 * as.numeric(determinant(crossprod(model.matrix(fcu)))$modulus))

# shared control groups: three multi-arm studies and one two-arm study (simulated summaries)
set.seed(12)
sc <- data.frame(study = c(1, 1, 1, 2, 2, 3, 4, 4, 4, 4), control = c("a", "a", "a", "a", "a", "a", "a", "a", "b", "b"))
sc$n1i <- sample(10:40, nrow(sc), replace = TRUE)
sc$m1i <- round(runif(nrow(sc), 8, 14), 2)
sc$sd1i <- round(runif(nrow(sc), 1, 4), 2)
ctrl <- unique(sc[, c("study", "control")])
ctrl$n2i <- sample(10:40, nrow(ctrl), replace = TRUE)
ctrl$m2i <- round(runif(nrow(ctrl), 8, 12), 2)
ctrl$sd2i <- round(runif(nrow(ctrl), 1, 4), 2)
sc <- merge(sc, ctrl, by = c("study", "control"), sort = FALSE)
sc <- sc[order(sc$study, sc$control), ]
key <- paste(sc$study, sc$control)
shared <- list()
for (measure in c("ROM", "SMD")) {
  es <- escalc(measure, m1i = m1i, sd1i = sd1i, n1i = n1i, m2i = m2i, sd2i = sd2i, n2i = n2i, data = sc)
  es$Ni <- ave(es$n1i, key, FUN = sum) + es$n2i
  calc.v <- function(x) {
    if (measure == "SMD") {
      v <- matrix(1 / x$n2i[1] + outer(x$yi, x$yi, "*") / (2 * x$Ni[1]), nrow = nrow(x), ncol = nrow(x))
    } else {
      v <- matrix(x$sd2i[1]^2 / (x$n2i[1] * x$m2i[1]^2), nrow = nrow(x), ncol = nrow(x))
    }
    diag(v) <- x$vi
    v
  }
  shared[[measure]] <- c(list(yi = as.numeric(es$yi), vi = as.numeric(es$vi)),
                         triplets(bldiag(lapply(split(es, factor(key, levels = unique(key))), calc.v))))
}
out <- list(metafor = as.character(packageVersion("metafor")), R = R.version.string,
            data = dat[, c("study", "esid", "yi", "vi", "deltype", "year", "outcome")],
            vcalc = vcalc_out, fits = fits, curtis_readme_fit = curtis_fit,
            shared_control = list(data = sc, V = shared))
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, na = "null", dataframe = "columns"), "vcalc_cases.json")
cat("done\n")
