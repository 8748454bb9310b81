# metafor 3.8-1 predictions that an orchard table (vcov = "gls") must reproduce.
# Run from this folder: Rscript make_orchard_reference.R  (writes orchard_reference.json)
library(metafor)
library(jsonlite)
out <- list(metafor = as.character(packageVersion("metafor")))

# 1. restoration, location-scale: yi ~ habitat + duration, log tau^2 ~ habitat (ML)
res <- read.csv("../../../src/drmpy/datasets/restoration.csv")
res$habitat <- factor(res$habitat, levels = c("grassland", "forest"))
m1 <- rma(yi, vi, mods = ~ habitat + duration, scale = ~ habitat, data = res, method = "ML",
          control = list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-14, maxit = 10000))
p1 <- predict(m1, newmods = cbind(c(0, 1), mean(res$duration)), newscale = c(0, 1))
out$restoration_by_habitat <- list(level = c("grassland", "forest"), estimate = p1$pred,
  conf_low = p1$ci.lb, conf_high = p1$ci.ub, pred_low = p1$pi.lb, pred_high = p1$pi.ub,
  loglik = as.numeric(logLik(m1)))

# 2. lim2014, three-level: yi ~ environment, random = ~ 1 | article/es_id (ML)
lim <- read.csv("../../../src/drmpy/datasets/lim2014.csv")
lim$environment <- factor(lim$environment, levels = c("captive", "wild"))
m2 <- rma.mv(yi, vi, mods = ~ environment, random = ~ 1 | article/es_id, data = lim, method = "ML",
             control = list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-14, maxit = 10000))
share_wild <- mean(lim$environment == "wild")
p2 <- predict(m2, newmods = c(0, 1, share_wild))
out$lim_by_environment_then_overall <- list(estimate = p2$pred, conf_low = p2$ci.lb,
  conf_high = p2$ci.ub, pred_low = p2$pi.lb, pred_high = p2$pi.ub, share_wild = share_wild,
  sigma2 = m2$sigma2, loglik = as.numeric(logLik(m2)))
writeLines(toJSON(out, digits = 15, auto_unbox = TRUE, pretty = TRUE), "orchard_reference.json")
print(p1); print(p2)
