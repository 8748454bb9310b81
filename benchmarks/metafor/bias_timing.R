# metafor's time for the work of benchmarks/bench_bias.py (issue 13).
# Usage (repository root, after python3 benchmarks/bench_bias.py wrote bias_three_level.csv):
#   Rscript benchmarks/metafor/bias_timing.R > benchmarks/metafor/bias_timing.txt
suppressPackageStartupMessages(library(metafor))
cat("metafor", as.character(packageVersion("metafor")), "\n")
cat("load average:", readLines("/proc/loadavg"), "(machine shared with other jobs)\n")

# 1. leave-one-study-out of the three-level model: 400 refits of rma.mv on 1,995 rows.
#    Timed on the first 5 studies and multiplied by 400 (the full loop takes too long here).
d <- read.csv("benchmarks/metafor/bias_three_level.csv")
ctrl <- list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-10)
full <- rma.mv(yi, vi, random = ~ 1 | study/es, data = d, method = "REML", sparse = TRUE, control = ctrl)
t <- system.time(for (s in 0:4) {
  rma.mv(yi, vi, random = ~ 1 | study/es, data = d, subset = study != s, method = "REML", sparse = TRUE,
         control = ctrl)
})[["elapsed"]]
cat(sprintf("leave-one-study-out, rma.mv(sparse = TRUE): %.2f s per refit, about %.0f s for 400 refits\n",
            t / 5, 400 * t / 5))

# 2. influence() of the restoration example (sigma ~ 1: rma with mods, ML); 80 refits inside.
r <- read.csv("src/drmpy/datasets/restoration.csv")
fit <- rma(yi, vi, mods = ~ habitat + duration, data = r, method = "ML")
times <- replicate(5, system.time(influence(fit))[["elapsed"]])
cat(sprintf("influence(rma(..., mods = ~ habitat + duration, method = 'ML')), 80 rows: median %.3f s\n",
            median(times)))
cat("sigma ~ habitat (scale = ~ habitat): metafor's influence() refuses location-scale models (rma.ls)\n")
