# Reference numbers for drmpy's heterogeneity summaries (q_test, i2, h2, r2), issue 11.
# metafor 3.8-1, metadat; run from this folder:  Rscript make_heterogeneity.R
# Writes one <data set>.csv (+ <data set>_V.csv for a full V) per data set and cases.json.
#
# rma():    QE, QEdf (k - p), QEp, tau2, I2, H2 and R2 as metafor reports them; s2 recomputed as in
#           metafor's rma.uni code: P = W - W X (X'WX)^-1 X'W, W = diag(1/vi), s2 = (k - p) / tr(P).
# rma.mv(): QE, QEdf, QEp, sigma2; s2 as in orchaRd's i2_ml (W = V^-1, same P); the multilevel I2
#           (Nakagawa & Santos 2012) per component and in total, 100 sigma2_j / (sum sigma2 + s2), and
#           H2 = (sum sigma2 + s2) / s2, computed here from metafor's components.
# r2 (orchaRd r2_ml, var with n - 1): fixef = var(X b); marginal = fixef / (fixef + sum of variances);
#           conditional = (fixef + sum of variances except the row-level one) / (fixef + sum).
# Tight control: the likelihood is flat near the optimum and metafor's defaults stop early.
suppressPackageStartupMessages({library(metafor); library(metadat); library(jsonlite)})

ctl_rma <- list(threshold = 1e-13, maxiter = 10000, stepadj = 0.5)
ctl_mv <- list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-14, maxit = 10000)

s2_of <- function(X, W) {
  XtWX <- crossprod(X, W %*% X)
  P <- W - W %*% X %*% solve(XtWX) %*% crossprod(X, W)
  (nrow(X) - ncol(X)) / sum(diag(P))
}

r2_of <- function(res, comps, row_level) {
  fixef <- if (ncol(model.matrix(res)) > 1) var(as.vector(model.matrix(res) %*% coef(res))) else 0
  total <- fixef + sum(comps)
  row <- if (row_level %in% names(comps)) comps[[row_level]] else 0  # none in a model without the row level
  list(marginal = fixef / total, conditional = (fixef + sum(comps) - row) / total)
}

common <- function(res, s2) list(
  QE = res$QE, QEdf = res$k - res$p, QEp = res$QEp, s2 = s2, loglik = as.numeric(logLik(res)),
  beta = as.vector(coef(res)), k = res$k, p = res$p)

cases <- list()

add_rma <- function(name, dataset, formula, dat, mods, method) {
  res <- if (is.null(mods)) rma(yi, vi, data = dat, method = method, control = ctl_rma)
         else rma(yi, vi, mods = mods, data = dat, method = method, control = ctl_rma)
  X <- model.matrix(res)
  s2 <- s2_of(X, diag(1 / dat$vi))
  out <- common(res, s2)
  out$tau2 <- res$tau2; out$I2 <- res$I2; out$H2 <- res$H2
  out$components <- list(sigma = res$tau2)
  out$i2_formula <- list(sigma = 100 * res$tau2 / (res$tau2 + s2), total = 100 * res$tau2 / (res$tau2 + s2))
  out$h2_formula <- (res$tau2 + s2) / s2
  out$r2 <- r2_of(res, c(sigma = res$tau2), "sigma")
  if (!is.null(mods)) out$r2$pseudo <- res$R2 / 100
  cases[[name]] <<- list(name = name, dataset = dataset, kind = "rma", method = method,
                         formulas = formula, metafor = out)
}

add_mv <- function(name, dataset, formula, dat, V, mods, random, comp_names, method) {
  res <- rma.mv(yi, V, mods = mods, random = random, data = dat, method = method, control = ctl_mv)
  X <- model.matrix(res)
  s2 <- s2_of(X, if (is.null(dim(V))) diag(1 / V) else solve(V))
  out <- common(res, s2)
  comps <- setNames(res$sigma2, comp_names)
  out$components <- as.list(comps)
  tot <- sum(comps) + s2
  out$i2_formula <- c(as.list(100 * comps / tot), list(total = 100 * sum(comps) / tot))
  out$h2_formula <- tot / s2
  out$r2 <- r2_of(res, comps, "sigma")
  cases[[name]] <<- list(name = name, dataset = dataset, kind = "rma.mv", method = method,
                         formulas = formula, metafor = out)
}

# ---- data sets (escalc as metafor's help pages do)
bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
write.csv(data.frame(trial = bcg$trial, yi = bcg$yi, vi = bcg$vi, ablat = bcg$ablat, alloc = bcg$alloc),
          "bcg.csv", row.names = FALSE)
hack <- dat.hackshaw1998
write.csv(data.frame(study = hack$study, yi = hack$yi, vi = hack$vi, design = hack$design, year = hack$year),
          "hackshaw.csv", row.names = FALSE)
mol <- escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014)
write.csv(data.frame(yi = mol$yi, vi = mol$vi, meanage = mol$meanage), "molloy.csv", row.names = FALSE)
nor <- escalc(measure = "MD", m1i = m1i, sd1i = sd1i, n1i = n1i, m2i = m2i, sd2i = sd2i, n2i = n2i,
              data = dat.normand1999)
write.csv(data.frame(yi = nor$yi, vi = nor$vi), "normand.csv", row.names = FALSE)
kon <- dat.konstantopoulos2011
kon$year_c <- kon$year - 1980
write.csv(data.frame(district = kon$district, school = kon$school, yi = kon$yi, vi = kon$vi, year_c = kon$year_c),
          "konstantopoulos.csv", row.names = FALSE)
cur <- escalc(measure = "ROM", m1i = m1i, sd1i = sd1i, n1i = n1i, m2i = m2i, sd2i = sd2i, n2i = n2i,
              data = dat.curtis1998)
cur$es <- seq_len(nrow(cur))
write.csv(data.frame(paper = cur$paper, es = cur$es, yi = cur$yi, vi = cur$vi, fungrp = cur$fungrp),
          "curtis.csv", row.names = FALSE)
brk <- dat.berkey1998
brk$row <- seq_len(nrow(brk))
Vb <- bldiag(lapply(split(brk[, c("v1i", "v2i")], brk$trial), as.matrix))
write.csv(data.frame(trial = brk$trial, row = brk$row, outcome = brk$outcome, yi = brk$yi, vi = brk$vi),
          "berkey.csv", row.names = FALSE)
write.table(Vb, "berkey_V.csv", sep = ",", row.names = FALSE, col.names = FALSE)

for (m in c("ML", "REML")) {
  lm <- tolower(m)
  add_rma(paste0("bcg_", lm), "bcg", "yi ~ 1 + meta_V(V=vi)", bcg, NULL, m)
  add_rma(paste0("bcg_ablat_", lm), "bcg", "yi ~ ablat + meta_V(V=vi)", bcg, ~ ablat, m)
  add_rma(paste0("hackshaw_", lm), "hackshaw", "yi ~ 1 + meta_V(V=vi)", hack, NULL, m)
  add_rma(paste0("hackshaw_design_", lm), "hackshaw", "yi ~ design + meta_V(V=vi)", hack, ~ design, m)
  add_rma(paste0("molloy_meanage_", lm), "molloy", "yi ~ meanage + meta_V(V=vi)", mol, ~ meanage, m)
  add_rma(paste0("normand_", lm), "normand", "yi ~ 1 + meta_V(V=vi)", nor, NULL, m)
  add_mv(paste0("konstantopoulos_", lm), "konstantopoulos", "yi ~ 1 + (1|district) + meta_V(V=vi)",
         kon, kon$vi, ~ 1, ~ 1 | district/school, c("sd(district)", "sigma"), m)
  add_mv(paste0("konstantopoulos_year_", lm), "konstantopoulos", "yi ~ year_c + (1|district) + meta_V(V=vi)",
         kon, kon$vi, ~ year_c, ~ 1 | district/school, c("sd(district)", "sigma"), m)
  add_mv(paste0("curtis_fungrp_", lm), "curtis", "yi ~ fungrp + (1|paper) + meta_V(V=vi)",
         cur, cur$vi, ~ fungrp, ~ 1 | paper/es, c("sd(paper)", "sigma"), m)
  add_mv(paste0("berkey_outcome_", lm), "berkey", "yi ~ 0 + outcome + (1|trial) + meta_V(V=V)",
         brk, Vb, ~ outcome - 1, ~ 1 | trial/row, c("sd(trial)", "sigma"), m)
}

# sigma ~ 0 with a random effect: rma.mv without the row-level (school) component
add_mv("konstantopoulos_district_only_ml", "konstantopoulos",
       c("yi ~ year_c + (1|district) + meta_V(V=vi)", "sigma ~ 0"),
       kon, kon$vi, ~ year_c, ~ 1 | district, c("sd(district)"), "ML")

# common-effect models (drmpy sigma ~ 0): metafor's EE I2 = max(0, 100 (QE - df) / QE), H2 = QE / df
add_ee <- function(name, dataset, formulas, dat, mods) {
  res <- if (is.null(mods)) rma(yi, vi, data = dat, method = "EE") else rma(yi, vi, mods = mods, data = dat, method = "EE")
  out <- common(res, s2_of(model.matrix(res), diag(1 / dat$vi)))
  out$I2 <- res$I2; out$H2 <- res$H2
  cases[[name]] <<- list(name = name, dataset = dataset, kind = "EE", method = "ML", formulas = formulas, metafor = out)
}
add_ee("bcg_ee", "bcg", c("yi ~ 1 + meta_V(V=vi)", "sigma ~ 0"), bcg, NULL)
add_ee("bcg_ablat_ee", "bcg", c("yi ~ ablat + meta_V(V=vi)", "sigma ~ 0"), bcg, ~ ablat)
add_ee("hackshaw_design_ee", "hackshaw", c("yi ~ design + meta_V(V=vi)", "sigma ~ 0"), hack, ~ design)
add_ee("normand_ee", "normand", c("yi ~ 1 + meta_V(V=vi)", "sigma ~ 0"), nor, NULL)

writeLines(toJSON(list(metafor = as.character(packageVersion("metafor")), cases = unname(cases)),
                  auto_unbox = TRUE, digits = NA, pretty = TRUE), "cases.json")
for (cs in cases) cat(sprintf("%-26s Q=%.6g df=%d s2=%.6g comps=%s\n", cs$name, cs$metafor$QE, cs$metafor$QEdf,
                              cs$metafor$s2, paste(signif(unlist(c(cs$metafor$components, cs$metafor$I2)), 6), collapse = ",")))
