# Writes cdp.csv and mag.csv (shipped with drmpy) from the data sets of the R package metaplus.
#
# Provenance. Both are published summary results of clinical trials, as distributed in metaplus
# 1.0-8 (Ken Beath; CRAN 2026-02-14; licence GPL (>= 2)), data/cdp.RData and data/mag.RData;
# only the numbers are taken, no code.
# - cdp: 10 trials of cytidinediphosphocholine (CDP-choline) for cognitive and behavioural
#   disturbances associated with chronic cerebral disorders in the elderly; yi is the study's
#   standardised mean difference, sei its standard error. Source (metaplus man/cdp.Rd):
#   Fioravanti, M. & Yanagi, M. (2005). Cytidinediphosphocholine (CDP choline) for cognitive and
#   behavioural disturbances associated with chronic cerebral disorders in the elderly (Review).
#   The Cochrane Database of Systematic Reviews, doi:10.1002/14651858.CD000269.pub2.
#   Used by Beath (2014, Research Synthesis Methods 5: 285-293, doi:10.1002/jrsm.1114) and the
#   metaplus vignette, after Gumedze & Jackson (2011), as a data set with one outlying study.
# - mag: 16 trials of intravenous magnesium in acute myocardial infarction; yi is the log odds
#   ratio of death, sei its standard error. Source (metaplus man/mag.Rd): Sterne, J. A. C.,
#   Bradburn, M. J. & Egger, M. (2001). Meta-analysis in Stata. In M. Egger, G. D. Smith &
#   D. G. Altman (Eds.), Systematic Reviews in Health Care: Meta-Analysis in Context
#   (pp. 347-369). BMJ Publishing Group.
#
# The columns are metaplus's (study, yi, sei), rows in metaplus's order, values unchanged;
# drmpy.datasets.cdp() / mag() add vi = sei^2. Note: metaplus's vignette names "Senin 2003" as
# the outlying CDP study, but in metaplus's data the outlying value (yi = 2.22) belongs to the
# row labelled "Bonavita 1983"; the labels are shipped as metaplus has them.
#
# Run from this folder: Rscript make_cdp_mag.R [folder holding cdp.RData and mag.RData]
# (default: the data folder of an unpacked metaplus source tarball at /tmp/metaplus_src).
args <- commandArgs(trailingOnly = TRUE)
src <- if (length(args) >= 1) args[1] else "/tmp/metaplus_src/data"
read_one <- function(name, nrow_expected) {
  env <- new.env()
  load(file.path(src, paste0(name, ".RData")), envir = env)
  d <- get(name, envir = env)
  stopifnot(nrow(d) == nrow_expected, identical(names(d), c("study", "yi", "sei")))
  out <- data.frame(study = as.character(d$study), yi = d$yi, sei = d$sei)
  # the shortest decimal text that reads back as the same double (write.csv's 15 digits lose
  # the last bits of some sei), so the CSV holds exactly what metaplus fits
  exact <- function(x) vapply(x, function(v) {
    for (digits in 15:17) {
      text <- trimws(formatC(v, digits = digits, format = "g"))
      if (as.numeric(text) == v) return(text)
    }
    stop("no exact decimal form")
  }, "")
  text <- data.frame(study = out$study, yi = exact(out$yi), sei = exact(out$sei))
  write.csv(text, paste0(name, ".csv"), row.names = FALSE, quote = c(1))
  back <- read.csv(paste0(name, ".csv"))
  stopifnot(identical(back$yi, out$yi), identical(back$sei, out$sei),
            identical(back$study, out$study))
  cat(sprintf("%s: %d studies\n", name, nrow(out)))
}
read_one("cdp", 10)
read_one("mag", 16)
