# Reference effect sizes: metafor 3.8-1 escalc() on metadat 1.2-0 data sets.
# Run from this folder: Rscript escalc_cases.R  -> escalc_cases.json
# Each case: the data columns (as given to escalc), the argument -> column mapping,
# the options (add/to/vtype; absent = metafor's default) and escalc's yi and vi.
suppressMessages({library(metafor); library(metadat); library(jsonlite)})

pritz_zero <- dat.pritz1997
pritz_zero$xi[1] <- 0                       # a zero count
pritz_zero$xi[2] <- pritz_zero$ni[2]        # all events (mi = 0)
hart_zero <- dat.hart1999
hart_zero$x1i[1] <- 0
hart_zero$x2i[3] <- 0
normand_na <- dat.normand1999
normand_na$m1i[3] <- NA                     # a missing input gives NA yi and vi
bcg <- dat.bcg
molloy_small <- dat.molloy2014
molloy_small$ni[2] <- 3                     # ni <= 3: ZCOR/COR vi is NA in metafor

means <- c(m1i = "m1i", sd1i = "sd1i", n1i = "n1i", m2i = "m2i", sd2i = "sd2i", n2i = "n2i")
bcg_args <- c(ai = "tpos", bi = "tneg", ci = "cpos", di = "cneg")
niel_args <- c(ai = "ai", n1i = "n1i", ci = "ci", n2i = "n2i")
cases <- list()
add_case <- function(name, data_name, dat, measure, args, opts = list()) {
  vals <- lapply(args, function(col) dat[[col]])
  res <- do.call(escalc, c(list(measure = measure), vals, opts))
  cols <- unique(unname(args))
  cases[[length(cases) + 1]] <<- list(
    name = name, dataset = data_name, measure = measure, args = as.list(args),
    options = opts, data = lapply(dat[cols], function(v) as.numeric(v)),
    yi = as.numeric(res$yi), vi = as.numeric(res$vi))
}
for (m in c("MD", "SMD", "SMDH", "ROM", "VR", "CVR")) {
  add_case(paste0("normand1999_", m), "dat.normand1999", dat.normand1999, m, means)
  add_case(paste0("curtis1998_", m), "dat.curtis1998", dat.curtis1998, m, means)
  add_case(paste0("normand1999_na_", m), "dat.normand1999 (m1i[3] = NA)", normand_na, m, means)
}
for (vt in list(c("MD", "HO"), c("SMD", "UB"), c("SMD", "LS2"), c("SMD", "AV"), c("SMDH", "LS2"),
                c("ROM", "HO"), c("ROM", "AV"), c("ROM", "AVHO")))
  add_case(paste0("curtis1998_", vt[1], "_", vt[2]), "dat.curtis1998", dat.curtis1998, vt[1], means,
           list(vtype = vt[2]))
for (m in c("OR", "RR", "RD", "PETO")) {
  add_case(paste0("bcg_", m), "dat.bcg", bcg, m, bcg_args)
  add_case(paste0("nielweise2007_", m), "dat.nielweise2007", dat.nielweise2007, m, niel_args)
  for (to in c("all", "if0all", "none"))
    add_case(paste0("nielweise2007_", m, "_to_", to), "dat.nielweise2007", dat.nielweise2007, m,
             niel_args, list(to = to))
  add_case(paste0("nielweise2007_", m, "_add1"), "dat.nielweise2007", dat.nielweise2007, m,
           niel_args, list(add = 1))
}
add_case("bcg_RD_UB", "dat.bcg", bcg, "RD", bcg_args, list(vtype = "UB"))
add_case("nielweise2007_RD_AV", "dat.nielweise2007", dat.nielweise2007, "RD", niel_args, list(vtype = "AV"))
for (m in c("COR", "ZCOR")) {
  add_case(paste0("molloy2014_", m), "dat.molloy2014", dat.molloy2014, m, c(ri = "ri", ni = "ni"))
  add_case(paste0("molloy2014_n3_", m), "dat.molloy2014 (ni[2] = 3)", molloy_small, m, c(ri = "ri", ni = "ni"))
}
add_case("molloy2014_COR_AV", "dat.molloy2014", dat.molloy2014, "COR", c(ri = "ri", ni = "ni"), list(vtype = "AV"))
for (m in c("PR", "PLO", "PAS", "PFT")) {
  add_case(paste0("pritz1997_", m), "dat.pritz1997", dat.pritz1997, m, c(xi = "xi", ni = "ni"))
  add_case(paste0("pritz1997_zero_", m), "dat.pritz1997 (xi[1] = 0, xi[2] = ni[2])", pritz_zero, m,
           c(xi = "xi", ni = "ni"))
  add_case(paste0("pritz1997_zero_", m, "_to_all"), "dat.pritz1997 (zeros)", pritz_zero, m,
           c(xi = "xi", ni = "ni"), list(to = "all", add = 0.5))
}
add_case("pritz1997_zero_PR_UB", "dat.pritz1997 (zeros)", pritz_zero, "PR", c(xi = "xi", ni = "ni"), list(vtype = "UB"))
add_case("pritz1997_zero_PR_AV", "dat.pritz1997 (zeros)", pritz_zero, "PR", c(xi = "xi", ni = "ni"), list(vtype = "AV"))
add_case("pritz1997_zero_PLO_AV", "dat.pritz1997 (zeros)", pritz_zero, "PLO", c(xi = "xi", ni = "ni"), list(vtype = "AV"))
add_case("pritz1997_zero_PLO_if0all", "dat.pritz1997 (zeros)", pritz_zero, "PLO", c(xi = "xi", ni = "ni"), list(to = "if0all"))
inc <- c(x1i = "x1i", t1i = "t1i", x2i = "x2i", t2i = "t2i")
for (m in c("IRR", "IRD")) {
  add_case(paste0("hart1999_", m), "dat.hart1999", dat.hart1999, m, inc)
  add_case(paste0("hart1999_zero_", m), "dat.hart1999 (x1i[1] = 0, x2i[3] = 0)", hart_zero, m, inc)
  add_case(paste0("hart1999_zero_", m, "_to_all"), "dat.hart1999 (zeros)", hart_zero, m, inc, list(to = "all"))
  add_case(paste0("hart1999_zero_", m, "_to_none"), "dat.hart1999 (zeros)", hart_zero, m, inc, list(to = "none"))
}
out <- list(metafor = as.character(packageVersion("metafor")),
            metadat = as.character(packageVersion("metadat")),
            R = R.version.string, cases = cases)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, na = "null", pretty = FALSE), "escalc_cases.json")
cat(length(cases), "cases\n")
