# metafor anchor for benchmarks/bench_batch_random.py: rma.mv(yi, vi, random = ~ 1 | study/es,
# method = "REML") looped over the groups of a CSV (gene, study, es, yi, vi).
# Usage: Rscript batch_random_timing.R data.csv out.csv   (writes gene, logLik, sigma2_study, sigma2_es)
suppressPackageStartupMessages(library(metafor))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
genes <- unique(d$gene)
fit_one <- function(g) {
  s <- d[d$gene == g, ]
  rma.mv(yi, vi, random = ~ 1 | study/es, data = s, method = "REML")
}
invisible(fit_one(genes[1]))  # warm-up
t0 <- proc.time()[["elapsed"]]
fits <- lapply(genes, fit_one)
elapsed <- proc.time()[["elapsed"]] - t0
out <- data.frame(gene = genes, logLik = sapply(fits, function(f) as.numeric(logLik(f))),
                  sigma2_study = sapply(fits, function(f) f$sigma2[1]),
                  sigma2_es = sapply(fits, function(f) f$sigma2[2]))
write.csv(out, args[2], row.names = FALSE)
cat(sprintf("metafor %s rma.mv REML loop: %d groups in %.2f s = %.1f fits/s\n",
            as.character(packageVersion("metafor")), length(genes), elapsed, length(genes) / elapsed))
