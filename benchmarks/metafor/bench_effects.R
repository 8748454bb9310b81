# R timings of the work benchmarks/bench_effects.py times (issue 12).
# Usage (from the repository root): Rscript benchmarks/metafor/bench_effects.R > benchmarks/metafor/bench_effects.txt
# metafor 3.8-1 escalc and vcalc, ape 5.7 read.tree + vcv(corr = TRUE); R 4.2.2, reference BLAS.
# vcalc builds its correlation matrix with an R loop over all k^2 / 2 row pairs (and a dense
# k x k V), so it is timed on smaller k and the 1e5-row case is not run.
suppressPackageStartupMessages({library(metafor); library(ape)})
cat(sprintf("load average at start: %s\n", paste(readLines("/proc/loadavg"), collapse = " ")))
set.seed(1)
n <- 1e6
d <- data.frame(m1i = rnorm(n, 10, 2), sd1i = runif(n, 1, 3), n1i = sample(5:59, n, TRUE),
                m2i = rnorm(n, 9, 2), sd2i = runif(n, 1, 3), n2i = sample(5:59, n, TRUE))
t_es <- min(replicate(3, system.time(escalc("SMD", m1i = m1i, sd1i = sd1i, n1i = n1i, m2i = m2i,
                                            sd2i = sd2i, n2i = n2i, data = d))[["elapsed"]]))
cat(sprintf("escalc('SMD'), 1e6 rows: %.3f s (best of 3)\n", t_es))

for (ultra in c(FALSE, TRUE)) {
  tr <- if (ultra) rcoal(5000) else rtree(5000)
  f <- tempfile(fileext = ".nwk")
  write.tree(tr, f)
  t_tree <- min(replicate(3, system.time(vcv(read.tree(f), corr = TRUE))[["elapsed"]]))
  cat(sprintf("read.tree + vcv(corr = TRUE), 5000-tip %s tree: %.3f s (best of 3)\n",
              if (ultra) "ultrametric (rcoal)" else "non-ultrametric (rtree)", t_tree))
}

for (k in c(500, 1000, 2000)) {
  n_clusters <- k / 5
  study <- sample(rep(seq_len(n_clusters), length.out = k))
  vi <- runif(k, 0.01, 0.1)
  t_v <- system.time(vcalc(vi, cluster = study, obs = seq_len(k), rho = 0.5, checkpd = FALSE))[["elapsed"]]
  cat(sprintf("vcalc(vi, cluster, obs = row, rho = 0.5, checkpd = FALSE), %d rows in %d clusters: %.2f s\n",
              k, n_clusters, t_v))
}
cat(sprintf("load average at end: %s\n", paste(readLines("/proc/loadavg"), collapse = " ")))
