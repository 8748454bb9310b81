# DerSimonian-Laird tau^2 of metafor 3.8-1 for the BCG data (the moment estimate drmpy starts from;
# tests/engine/test_start.py).  Run: Rscript make_dl.R > dl.json
suppressMessages(library(metafor))
dat <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
intercept <- rma(yi, vi, data = dat, method = "DL")
moderator <- rma(yi, vi, mods = ~ ablat, data = dat, method = "DL")
cat(jsonlite::toJSON(list(yi = as.numeric(dat$yi), vi = as.numeric(dat$vi), ablat = dat$ablat,
                          tau2_intercept = intercept$tau2, tau2_ablat = moderator$tau2),
                     digits = NA, auto_unbox = TRUE), "\n")
