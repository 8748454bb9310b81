# What metafor 3.8-1 does with the inputs tests/engine/test_nonfinite.py and
# tests/model/test_one_level.py refuse (issue 22, items 1 and 6).  Output: metafor_output.txt.
# Run: Rscript make.R > metafor_output.txt 2>&1
suppressPackageStartupMessages(library(metafor))
cat("metafor", as.character(packageVersion("metafor")), "\n")
yi <- c(0.1, 0.3, -0.2, 0.5)
vi <- c(0.1, 0.05, 0, 0.2)
show <- function(label, expr) {
  cat("\n==", label, "\n")
  r <- withCallingHandlers(try(expr, silent = TRUE),
                           warning = function(w) { cat("warning:", conditionMessage(w), "\n"); invokeRestart("muffleWarning") })
  if (inherits(r, "try-error")) cat("error:", conditionMessage(attr(r, "condition")), "\n")
  else cat("estimate:", format(coef(r), digits = 10), " tau2/sigma2:", format(c(r$tau2, r$sigma2), digits = 10), "\n")
}
# item 1: a zero sampling variance in the common-effect model (drmpy: sigma ~ 0)
show("rma EE, one vi = 0", rma(yi, vi, method = "EE"))
# ... and with tau^2 estimated (drmpy: sigma ~ 1), which fits
show("rma REML, one vi = 0 (threshold 1e-12)", rma(yi, vi, method = "REML", control = list(threshold = 1e-12, maxiter = 1000)))
# item 6: a random term whose factor has one level
d <- data.frame(yi = yi, vi = c(0.1, 0.05, 0.08, 0.2), study = "s1", id = 1:4)
show("rma.mv, ~ 1 | study with one level", rma.mv(yi, vi, random = ~ 1 | study, data = d))
