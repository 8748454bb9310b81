# metafor 3.8-1 location-scale fits of dat.bcg quoted in tests/engine/test_scale_invariance.py.
# metafor models log(tau^2) = alpha'z; drmpy's sigma coefficients are alpha / 2.
# metafor itself stops with an error on scale=~I(ablat*1e-6); its optimum is the ablat fit's
# slope times 1e6 (the model is the same).
suppressMessages(library(metafor))
options(digits = 12)
dat <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
ctrl <- list(optimizer = "BFGS", reltol = 1e-14)
for (m in c("ML", "REML")) {
  for (sc in list(~ I(year * 10), ~ ablat)) {
    r <- rma(yi, vi, mods = ~ ablat, scale = sc, data = dat, method = m, control = ctrl)
    cat(m, deparse(sc), "logLik", format(logLik(r), digits = 12),
        "beta", format(r$beta, digits = 12),
        "alpha/2", format(r$alpha / 2, digits = 12),
        "se(alpha)/2", format(r$se.alpha / 2, digits = 12), "\n")
  }
}
# output (R 4.2.2, metafor 3.8-1):
# ML ~I(year * 10) logLik -7.66034859091 beta 0.3448623054146 -0.0317046197244 alpha/2 49.62603379684973 -0.00262104287673 se(alpha)/2 243.0874606013409 0.0124276039019
# ML ~ablat logLik -7.53929025009 beta 0.3044680360715 -0.0297726914447 alpha/2 -2.4787453848535 0.0192966304936 se(alpha)/2 1.6337941350713 0.0365212861286
# REML ~I(year * 10) logLik -7.98787876187 beta 0.2053617409836 -0.0275381740486 alpha/2 -36.4496295747411 0.0017901134249 se(alpha)/2 79.474264312558 0.004042461792
# REML ~ablat logLik -8.08727792524 beta 0.2514760459409 -0.0291105216412 alpha/2 -1.271250648203141 -0.000365070119966 se(alpha)/2 1.7099317252788 0.0397881159587
