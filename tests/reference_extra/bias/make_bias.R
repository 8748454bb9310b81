# Reference numbers for drmpy's bias/sensitivity stage (issue 13), metafor 3.8-1.
# Run from this folder: Rscript make_bias.R   (writes bias_reference.json and data_*.csv)
suppressMessages({library(metafor); library(jsonlite)})
ctrl <- list(threshold = 1e-13, maxiter = 10000, stepadj = 0.5)
mvctrl <- list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-14, maxit = 10000)
selctrl <- list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-15, maxit = 10000)

bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
molloy <- escalc(measure = "ZCOR", ri = ri, ni = ni, data = dat.molloy2014)
normand <- escalc(measure = "MD", m1i = m1i, sd1i = sd1i, n1i = n1i, m2i = m2i, sd2i = sd2i, n2i = n2i,
                  data = dat.normand1999)
raud <- dat.raudenbush1985
raud$ni <- raud$n1i + raud$n2i
hack <- dat.hackshaw1998
sets <- list(
  bcg = data.frame(yi = c(bcg$yi), vi = bcg$vi, ablat = bcg$ablat, ni = bcg$tpos + bcg$tneg + bcg$cpos + bcg$cneg),
  hackshaw = data.frame(yi = hack$yi, vi = hack$vi),
  molloy = data.frame(yi = c(molloy$yi), vi = molloy$vi, ni = molloy$ni),
  raudenbush = data.frame(yi = raud$yi, vi = raud$vi, ni = raud$ni),
  normand = data.frame(yi = c(normand$yi), vi = normand$vi, ni = normand$n1i + normand$n2i)
)
for (nm in names(sets)) write.csv(sets[[nm]], paste0("data_", nm, ".csv"), row.names = FALSE)

num <- function(x) as.numeric(unname(x))
# rma with the tight control; where Fisher scoring cannot meet threshold 1e-13 (tau2 near 0),
# a smaller step and a looser threshold (recorded in the output as `threshold`)
rma_tight <- function(yi, vi, method) {
  for (th in c(1e-13, 1e-12, 1e-11, 1e-10)) {
    r <- tryCatch(rma(yi, vi, method = method, control = list(threshold = th, maxiter = 10000, stepadj = if (th > 1e-13) 0.1 else 0.5)),
                  error = function(e) NULL)
    if (!is.null(r)) { r$threshold_used <- th; return(r) }
  }
  stop("rma did not converge")
}

reg <- function(fit, predictor, ni = NULL) tryCatch(reg1(fit, predictor, ni), error = function(e) NULL)
reg1 <- function(fit, predictor, ni = NULL) {
  r <- if (is.null(ni)) regtest(fit, model = "rma", predictor = predictor)
       else regtest(fit, model = "rma", predictor = predictor, ni = ni)
  list(zval = num(r$zval), pval = num(r$pval), est = num(r$est), ci_lb = num(r$ci.lb), ci_ub = num(r$ci.ub),
       slope = num(coef(r$fit)[length(coef(r$fit))]))
}

tf <- function(fit, estimator) {
  t <- trimfill(fit, estimator = estimator)
  filled <- t$fill
  # trimfill's own refit uses rma's default control: refit the filled data with the tight one
  r <- rma_tight(t$yi, t$vi, fit$method)
  list(k0 = num(t$k0), se_k0 = num(t$se.k0), side = t$side, beta = num(r$beta), se = num(r$se), threshold = r$threshold_used,
       tau2 = num(r$tau2), filled_yi = num(t$yi[filled]), filled_vi = num(t$vi[filled]))
}

sel <- function(fit, steps) {
  s <- selmodel(fit, type = "stepfun", steps = steps, control = selctrl)
  list(steps = steps, beta = num(s$beta), se = num(s$se), tau2 = num(s$tau2), se_tau2 = num(s$se.tau2),
       delta = num(s$delta), se_delta = num(s$se.delta), ll = num(s$ll), LRT = num(s$LRT),
       LRTdf = num(s$LRTdf), LRTp = num(s$LRTp), ll0 = num(logLik(fit)))
}

l1o <- function(fit) {
  l <- leave1out(fit)  # refits with fit$control
  list(estimate = num(l$estimate), se = num(l$se), tau2 = num(l$tau2), Q = num(l$Q), I2 = num(l$I2))
}

infl <- function(fit) {
  f <- influence(fit)
  list(rstudent = num(f$inf$rstudent), dffits = num(f$inf$dffits), cook_d = num(f$inf$cook.d),
       cov_r = num(f$inf$cov.r), tau2_del = num(f$inf$tau2.del), QE_del = num(f$inf$QE.del),
       hat = num(f$inf$hat), weight = num(f$inf$weight),
       dfbs = lapply(as.list(dfbetas(fit)), num), is_infl = as.logical(f$is.infl))
}

out <- list(metafor = as.character(packageVersion("metafor")), uni = list())
for (nm in names(sets)) {
  d <- sets[[nm]]
  for (method in c("REML", "ML")) {
    fit <- rma_tight(d$yi, d$vi, method)
    e <- list(data = nm, method = method, mods = FALSE, threshold = fit$threshold_used,
              beta = num(fit$beta), tau2 = num(fit$tau2), ll = num(logLik(fit)),
              regtest = list(sei = reg(fit, "sei"), vi = reg(fit, "vi")),
              trimfill = list(L0 = tf(fit, "L0"), R0 = tf(fit, "R0")),
              leave1out = l1o(fit), influence = infl(fit))
    if (!is.null(d$ni)) {
      e$regtest$ni <- reg(fit, "ni", ni = d$ni)
      e$regtest$sqrtninv <- reg(fit, "sqrtninv", ni = d$ni)
      e$regtest$ninv <- reg(fit, "ninv", ni = d$ni)
      e$regtest$sqrtni <- reg(fit, "sqrtni", ni = d$ni)
    }
    if (method == "ML" && nm %in% c("hackshaw", "molloy", "raudenbush", "bcg", "normand")) {
      e$selmodel <- list(one = sel(fit, 0.025))
      if (nm %in% c("hackshaw", "raudenbush")) e$selmodel$two <- sel(fit, c(0.025, 0.5))
    }
    if (method == "REML" && nm == "hackshaw") e$selmodel_from_reml <- sel(fit, 0.025)
    out$uni[[paste(nm, method, sep = "_")]] <- e
  }
}
# a meta-regression: Egger's test with a moderator (limit not defined), leave1out and influence
fit <- rma(yi, vi, mods = ~ ablat, data = sets$bcg, method = "REML", control = ctrl)
out$uni[["bcg_ablat_REML"]] <- list(data = "bcg", method = "REML", mods = TRUE, beta = num(fit$beta),
  tau2 = num(fit$tau2), regtest = list(sei = reg(fit, "sei")), leave1out = NULL, influence = infl(fit))
l <- sapply(seq_len(fit$k), function(i) {
  r <- rma(yi, vi, mods = ~ ablat, data = sets$bcg[-i, ], method = "REML", control = ctrl)
  c(num(r$beta), num(r$tau2))
})
out$uni[["bcg_ablat_REML"]]$leave1out_beta <- t(l)

# three-level model: district / school (one effect size per school)
k <- dat.konstantopoulos2011
write.csv(data.frame(yi = k$yi, vi = k$vi, district = k$district, school = k$school, year = k$year),
          "data_konstantopoulos.csv", row.names = FALSE)
mv <- rma.mv(yi, vi, random = ~ 1 | district/school, data = k, method = "REML", control = mvctrl)
eg <- rma.mv(yi, vi, mods = ~ sqrt(vi), random = ~ 1 | district/school, data = k, method = "REML",
             control = mvctrl)
eg_ml <- rma.mv(yi, vi, mods = ~ sqrt(vi), random = ~ 1 | district/school, data = k, method = "ML",
                control = mvctrl)
egger_mv <- function(e) list(beta = num(e$beta), se = num(e$se), zval = num(e$zval), pval = num(e$pval),
                             ci_lb = num(e$ci.lb), ci_ub = num(e$ci.ub), sigma2 = num(e$sigma2), ll = num(logLik(e)))
rs <- rstudent(mv)
rsc <- rstudent(mv, cluster = k$district)
districts <- sort(unique(k$district))
l1o_d <- t(sapply(districts, function(g) {
  r <- rma.mv(yi, vi, random = ~ 1 | district/school, data = k, subset = district != g, method = "REML",
              control = mvctrl)
  c(num(r$beta), num(r$sigma2), num(logLik(r)))
}))
out$mv <- list(
  beta = num(mv$beta), sigma2 = num(mv$sigma2), ll = num(logLik(mv)),
  egger = egger_mv(eg), egger_ml = egger_mv(eg_ml),
  cooks = num(cooks.distance(mv)), cooks_district = num(cooks.distance(mv, cluster = k$district)),
  dfbetas = num(dfbetas(mv)[, 1]), dfbetas_district = num(dfbetas(mv, cluster = k$district)[, 1]),
  hat = num(hatvalues(mv)),
  rstudent = list(resid = num(rs$resid), se = num(rs$se), z = num(rs$z)),
  rstudent_district = list(resid = num(rsc$obs$resid), se = num(rsc$obs$se), z = num(rsc$obs$z),
                           X2 = num(rsc$cluster$X2), k = num(rsc$cluster$k)),
  districts = districts, leave_district = l1o_d
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null", null = "null"), "bias_reference.json")
