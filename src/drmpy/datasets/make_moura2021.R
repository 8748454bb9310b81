# Writes moura2021.csv and moura2021.nwk (shipped with drmpy) from metadat's dat.moura2021.
# Source: Moura, R. R., Oliveira Gonzaga, M., Silva Pinto, N., Vasconcellos-Neto, J. &
# Requena, G. S. (2021). Assortative mating in space and time: Patterns and biases.
# Ecology Letters 24(5), 1089-1102; data as distributed by the R package metadat (Data sets
# for meta-analysis, licence GPL (>= 2)).
# The columns are dat.moura2021$dat's with dots written as underscores, plus metafor's
# escalc(measure = "ZCOR") yi and vi and a column `phylogeny` (a copy of species_id, metafor's
# convention for the phylogenetic term beside the species term).  The tree has no branch
# lengths in metadat; as in metafor's help page for these data, Grafen's (1989) lengths are
# computed with ape's compute.brlen() (an ultrametric tree of height 1).
# Run from this folder: Rscript make_moura2021.R
suppressPackageStartupMessages({library(metadat); library(metafor); library(ape)})
d <- dat.moura2021$dat
d <- escalc(measure = "ZCOR", ri = ri, ni = ni, data = d)
d$phylogeny <- d$species.id
names(d) <- gsub(".", "_", names(d), fixed = TRUE)
tree <- compute.brlen(dat.moura2021$tree)
stopifnot(all(d$species_id %in% tree$tip.label))
write.csv(as.data.frame(d), "moura2021.csv", row.names = FALSE)
write.tree(tree, "moura2021.nwk")
cat(sprintf("metadat %s: %d effect sizes, %d studies, %d species; tree %d tips, binary %s\n",
            packageVersion("metadat"), nrow(d), length(unique(d$study_id)), length(unique(d$species_id)),
            Ntip(tree), is.binary(tree)))
