# metafor's predict() for 1e5 new rows of the restoration model (issue 10 benchmark).
# Usage (from the repository root): Rscript benchmarks/metafor/metafor_predict.R [data.csv]
# Writes benchmarks/metafor/metafor_predict.txt.  Same new rows as benchmarks/bench_inference.py
# in distribution (habitat 50:50, duration N(0, 1)); median of 5 calls after one untimed call.
suppressPackageStartupMessages(library(metafor))
args <- commandArgs(trailingOnly = FALSE)
script <- normalizePath(sub("^--file=", "", grep("^--file=", args, value = TRUE)[1]))
targs <- commandArgs(trailingOnly = TRUE)
path <- if (length(targs)) targs[1] else "/work/shared/reference/seed_restoration/data.csv"
dat <- read.csv(path)
dat$habitat <- factor(dat$habitat, levels = c("grassland", "forest"))
fit <- rma(yi, vi, mods = ~ habitat + duration, scale = ~ habitat, data = dat, method = "ML")
set.seed(1)
n <- 1e5
forest <- as.numeric(sample(c(0, 1), n, replace = TRUE))
duration <- rnorm(n)
newmods <- cbind(forest, duration)
newscale <- forest
timeit <- function(f, reps = 5) { f(); median(replicate(reps, system.time(f())[["elapsed"]])) }
t_pred <- timeit(function() predict(fit, newmods = newmods, newscale = newscale))
out <- c(sprintf("# %s, metafor %s; load average %s", R.version.string, packageVersion("metafor"),
                 paste(readLines("/proc/loadavg"), collapse = " ")),
         sprintf("predict(rma location-scale, newmods = 1e5 x 2, newscale = 1e5) : %.3f s (median of 5)", t_pred))
writeLines(out)
writeLines(out, file.path(dirname(script), "metafor_predict.txt"))
