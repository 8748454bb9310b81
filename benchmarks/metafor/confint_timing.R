# metafor's confint() on the restoration example (the model of benchmarks/bench_intervals.py):
#   rma(yi, vi, mods = ~ habitat + duration, scale = ~ habitat, method = "ML")
# confint() of a location-scale model gives profile-likelihood intervals for the scale
# (alpha) coefficients (two of them here); the location coefficients only get Wald intervals.
# Run from the repository root:  Rscript benchmarks/metafor/confint_timing.R > benchmarks/metafor/confint_timing.txt
suppressPackageStartupMessages(library(metafor))
dat <- read.csv("src/drmpy/datasets/restoration.csv")
dat$habitat <- factor(dat$habitat, levels = c("grassland", "forest"))
res <- rma(yi, vi, mods = ~ habitat + duration, scale = ~ habitat, data = dat, method = "ML")
ci <- confint(res)  # warm-up, and the intervals printed below
times <- replicate(5, system.time(confint(res))[["elapsed"]])
cat(sprintf("metafor %s, %s\n", packageVersion("metafor"), R.version.string))
cat(sprintf("confint(rma location-scale, 2 alpha profile intervals): median %.3f s over 5 (min %.3f)\n",
            median(times), min(times)))
print(ci)
