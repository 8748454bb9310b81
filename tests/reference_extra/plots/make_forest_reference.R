# metafor 3.8-1 forest-plot numbers that drmpy's forest_table / forest must reproduce.
# Run from this folder: Rscript make_forest_reference.R
# Writes forest_bcg.csv (dat.bcg with yi, vi and the per-study forest strings) and
# forest_reference.json (pooled estimate, heterogeneity, weights of an rma.mv fit).
library(metafor)
library(metadat)
library(jsonlite)
out <- list(metafor = as.character(packageVersion("metafor")))

# 1. dat.bcg, log risk ratios, random-effects model (REML, metafor's default)
dat <- escalc("RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
res <- rma(yi, vi, data = dat)

# the annotation strings forest(res, showweights = TRUE) draws: record the text() calls it makes
drawn <- list()
trace(graphics::text, tracer = quote(drawn[[length(drawn) + 1]] <<- list(...)), print = FALSE,
      where = asNamespace("graphics"))
pdf(NULL)
fp <- forest(res, showweights = TRUE, header = TRUE)
dev.off()
untrace(graphics::text, where = asNamespace("graphics"))
# text(x, y, labels, ...): labels named or the third positional argument
label_of <- function(d) {
  if (!is.null(d$labels)) return(as.character(d$labels))
  unnamed <- d[names(d) == "" | is.null(names(d))]
  if (length(unnamed) >= 3) as.character(unnamed[[3]]) else character(0)
}
labels <- unlist(lapply(drawn, label_of))
annot <- labels[grepl("%", labels, fixed = TRUE) & grepl("[", labels, fixed = TRUE)]
# forest draws studies bottom (row 1 = last study) to top; annot has k study rows then the RE row
k <- res$k
rows <- fp$rows
study_annot <- annot[seq_len(k)]
pooled_annot <- annot[k + 1]

# the same strings computed as forest does (.fcf = formatC(format = "f", digits = 2))
w <- weights(res)
ci <- dat$yi + c(-1, 1) %o% (qnorm(0.975) * sqrt(dat$vi))
fmt <- function(x) formatC(x, format = "f", digits = 2)
dat$weight <- as.numeric(w)
dat$conf_low <- dat$yi - qnorm(0.975) * sqrt(dat$vi)
dat$conf_high <- dat$yi + qnorm(0.975) * sqrt(dat$vi)
dat$weight_text <- paste0(fmt(w), "%")
dat$estimate_text <- paste0(fmt(dat$yi), " [", fmt(dat$conf_low), ", ", fmt(dat$conf_high), "]")
# forest's own drawn text (padded to common width), for the record
dat$forest_text <- study_annot[match(seq_len(k), k + 1 - rows)]
stopifnot(all(trimws(gsub(" +", " ", dat$forest_text)) ==
              trimws(gsub(" +", " ", paste0(dat$weight_text, " ", dat$estimate_text)))))
write.csv(as.data.frame(dat), "forest_bcg.csv", row.names = FALSE)

pred <- predict(res)
out$bcg_reml <- list(
  estimate = as.numeric(res$b), conf_low = res$ci.lb, conf_high = res$ci.ub,
  pred_low = pred$pi.lb, pred_high = pred$pi.ub, tau2 = res$tau2, I2 = res$I2, H2 = res$H2,
  QE = res$QE, QEp = res$QEp, df = res$k - res$p, k = res$k,
  weights = as.numeric(w), weight_text = dat$weight_text, estimate_text = dat$estimate_text,
  pooled_text = paste0(fmt(res$b), " [", fmt(res$ci.lb), ", ", fmt(res$ci.ub), "]"),
  forest_pooled_text = pooled_annot, forest_study_text = dat$forest_text,
  forest_annotations = annot)

# 1b. the same with absolute latitude as moderator (mlab numbers: residual heterogeneity)
res_ablat <- rma(yi, vi, mods = ~ ablat, data = dat)
out$bcg_ablat_reml <- list(QE = res_ablat$QE, QEp = res_ablat$QEp, df = res_ablat$k - res_ablat$p,
  I2 = res_ablat$I2, tau2 = res_ablat$tau2, weights = as.numeric(weights(res_ablat)))

# 2. lim2014, three-level (ML): weights(rma.mv) = diag(M^-1) as a percentage
lim <- read.csv("../../../src/drmpy/datasets/lim2014.csv")
lim$environment <- factor(lim$environment, levels = c("captive", "wild"))
m2 <- rma.mv(yi, vi, mods = ~ environment, random = ~ 1 | article/es_id, data = lim, method = "ML",
             control = list(optimizer = "optim", optmethod = "BFGS", reltol = 1e-14, maxit = 10000))
out$lim_three_level_ml <- list(weights = as.numeric(weights(m2)), sigma2 = m2$sigma2)
writeLines(toJSON(out, digits = 15, auto_unbox = TRUE, pretty = TRUE), "forest_reference.json")
cat(paste(annot, collapse = "\n"), "\n")
print(labels)
print(res)
