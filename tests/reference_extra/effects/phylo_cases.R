# Reference phylogenetic correlation matrices: ape's vcv(tree, corr = TRUE) (Brownian motion).
# Run from this folder: Rscript phylo_cases.R
# -> phylo_<name>.nwk (the tree, written by ape's write.tree with 17 significant digits)
#    phylo_<name>_corr.csv.gz (the matrix, rows and columns in tip.label order, 17 digits)
#    phylo_cases.json (ape and R versions, tip counts, ultrametric or not)
suppressMessages({library(ape); library(jsonlite)})
set.seed(2026)
trees <- list(
  coal200 = rcoal(200),                 # ultrametric (random coalescent)
  rtree200 = rtree(200),                # non-ultrametric, random branch lengths
  rtree30_polytomy = di2multi(rtree(30), tol = 0.15)  # non-binary: short edges collapsed
)
info <- list()
for (name in names(trees)) {
  tr <- trees[[name]]
  write.tree(tr, paste0("phylo_", name, ".nwk"), digits = 17)
  tr2 <- read.tree(paste0("phylo_", name, ".nwk"))   # the matrix of the tree as written
  C <- vcv(tr2, corr = TRUE)
  con <- gzfile(paste0("phylo_", name, "_corr.csv.gz"), "w")
  write.table(format(C, digits = 17), con, sep = ",", quote = FALSE, col.names = NA)
  close(con)
  info[[name]] <- list(tips = Ntip(tr2), ultrametric = is.ultrametric(tr2), binary = is.binary(tr2))
}
writeLines(toJSON(list(ape = as.character(packageVersion("ape")), R = R.version.string, trees = info),
                  auto_unbox = TRUE, pretty = TRUE), "phylo_cases.json")
