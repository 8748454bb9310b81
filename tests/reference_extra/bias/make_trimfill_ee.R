# Reference numbers for drmpy's trim_and_fill on a common-effect model (sigma ~ 0), metafor 3.8-1:
# trimfill(rma(yi, vi, method = "EE")), issue 22 item 12.  Uses the data_*.csv that make_bias.R wrote.
# Run from this folder: Rscript make_trimfill_ee.R   (writes trimfill_ee_reference.json)
suppressMessages({library(metafor); library(jsonlite)})
num <- function(x) as.numeric(unname(x))
out <- list(metafor = as.character(packageVersion("metafor")), method = "EE", sets = list())
for (nm in c("bcg", "hackshaw", "molloy", "raudenbush", "normand")) {
  d <- read.csv(paste0("data_", nm, ".csv"))
  fit <- rma(yi, vi, data = d, method = "EE")
  e <- list(beta = num(fit$beta), se = num(fit$se))
  for (estimator in c("L0", "R0")) {
    t <- trimfill(fit, estimator = estimator)
    filled <- t$fill
    e[[estimator]] <- list(k0 = num(t$k0), se_k0 = num(t$se.k0), p_k0 = num(t$p.k0), side = t$side,
                           beta = num(t$beta), se = num(t$se), method = t$method,
                           filled_yi = num(t$yi[filled]), filled_vi = num(t$vi[filled]))
    for (side in c("left", "right")) {
      s <- trimfill(fit, estimator = estimator, side = side)
      e[[paste0(estimator, "_", side)]] <- list(k0 = num(s$k0), se_k0 = num(s$se.k0), beta = num(s$beta),
                                                 se = num(s$se), filled_yi = num(s$yi[s$fill]))
    }
  }
  out$sets[[nm]] <- e
}
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, null = "null", pretty = TRUE), "trimfill_ee_reference.json")
