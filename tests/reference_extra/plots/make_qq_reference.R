# metafor 3.8-1 internally standardized residuals (rstandard), the residuals qq() draws by default.
# Run from this folder: Rscript make_qq_reference.R  (writes qq_reference.json)
library(metafor)
library(jsonlite)
out <- list(metafor = as.character(packageVersion("metafor")))
ctrl <- list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-14, maxit = 10000)

# lim2014, three-level: yi ~ environment, random = ~ 1 | article/es_id (ML)
lim <- read.csv("../../../src/drmpy/datasets/lim2014.csv")
lim$environment <- factor(lim$environment, levels = c("captive", "wild"))
m <- rma.mv(yi, vi, mods = ~ environment, random = ~ 1 | article/es_id, data = lim, method = "ML",
            control = ctrl)
rs <- rstandard(m)
out$lim_three_level <- list(es_id = lim$es_id, resid = as.numeric(rs$resid), se = as.numeric(rs$se),
                            z = as.numeric(rs$z), loglik = as.numeric(logLik(m)))

# restoration, random-effects model without moderators (REML), as rma.uni's qqnorm draws
res <- read.csv("../../../src/drmpy/datasets/restoration.csv")
m2 <- rma(yi, vi, data = res, method = "REML")
rs2 <- rstandard(m2)
out$restoration_random <- list(z = as.numeric(rs2$z), se = as.numeric(rs2$se), tau2 = m2$tau2)
writeLines(toJSON(out, digits = 15, auto_unbox = TRUE, pretty = TRUE), "qq_reference.json")
print(head(as.data.frame(rs))); print(head(as.data.frame(rs2)))
