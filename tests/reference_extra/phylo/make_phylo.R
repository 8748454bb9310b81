# Reference fits for drmpy's tree route of phylo(1 | species, tree = ...):
# metafor 3.8-1 rma.mv with R = list(phylo = vcv(tree, corr = TRUE)) (ape 5.7), R 4.2.
# Run from this folder: Rscript make_phylo.R  (writes <case>/tree.nwk, data.csv, case.json)
suppressPackageStartupMessages({library(metafor); library(ape); library(jsonlite)})

make_case <- function(name, tree, n_obs_species, per_species, n_study, seed, crossed) {
  set.seed(seed)
  tips <- tree$tip.label
  observed <- sample(tips, n_obs_species)
  species <- sample(rep(observed, length.out = n_obs_species * per_species))
  n <- length(species)
  C <- vcv(tree, corr = TRUE)
  u <- drop(t(chol(C[observed, observed])) %*% rnorm(n_obs_species, sd = 0.5))
  names(u) <- observed
  s <- rnorm(n_obs_species, sd = 0.3); names(s) <- observed
  study <- sample(seq_len(n_study), n, replace = TRUE)
  w <- rnorm(n_study, sd = 0.25)
  x <- rnorm(n)
  vi <- runif(n, 0.02, 0.2)
  yi <- 0.2 + 0.3 * x + u[species] + s[species] + rnorm(n, sd = 0.2) + rnorm(n, sd = sqrt(vi))
  if (crossed) yi <- yi + w[study]
  dat <- data.frame(species = species, phylo = species, study = paste0("s", study), x = x,
                    yi = unname(yi), vi = vi, obs = seq_len(n))
  dir.create(name, showWarnings = FALSE)
  write.tree(tree, file.path(name, "tree.nwk"))
  write.csv(dat[, c("species", "phylo", "study", "x", "yi", "vi")], file.path(name, "data.csv"), row.names = FALSE)
  random <- if (crossed) list(~ 1 | species, ~ 1 | phylo, ~ 1 | study, ~ 1 | obs) else
    list(~ 1 | species, ~ 1 | phylo, ~ 1 | obs)
  fits <- list()
  for (method in c("ML", "REML")) {
    t0 <- Sys.time()
    res <- rma.mv(yi, vi, mods = ~ x, random = random, R = list(phylo = C), data = dat,
                  method = method, control = list(rel.tol = 1e-10, iter.max = 10000, eval.max = 10000))
    fits[[method]] <- list(loglik = as.numeric(logLik(res)), beta = unname(coef(res)),
                           se = unname(res$se), sigma2 = unname(res$sigma2),
                           seconds = as.numeric(difftime(Sys.time(), t0, units = "secs")))
  }
  info <- list(case = name, tips = Ntip(tree), ultrametric = is.ultrametric(tree),
               binary = is.binary(tree), species_observed = n_obs_species, rows = n,
               crossed_study = crossed,
               sigma2_order = if (crossed) c("species", "phylo", "study", "obs") else c("species", "phylo", "obs"),
               metafor = fits, versions = list(R = R.version.string, metafor = as.character(packageVersion("metafor")),
                                               ape = as.character(packageVersion("ape"))))
  write(toJSON(info, auto_unbox = TRUE, digits = NA, pretty = TRUE), file.path(name, "case.json"))
}

set.seed(2026)
make_case("rcoal30", rcoal(30), 30, 3, 1, 11, FALSE)
make_case("rtree120", rtree(120), 100, 2, 1, 12, FALSE)
poly <- di2multi(rtree(200), tol = 0.15)  # branches shorter than 0.15 collapsed: polytomies
make_case("rtree200_polytomy", poly, 180, 2, 1, 13, FALSE)
make_case("rcoal500_study", rcoal(500), 400, 3, 40, 14, TRUE)
