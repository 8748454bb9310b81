# Wall time of metaplus 1.0-8's testOutliers(R = 999) for the Student-t model on sim30.csv
# (30 studies), one core: the piece that make_robust.R's stage 3 (`timing$t_R999`) did not get
# to. Same calls as make_robust.R's fit_one("sim30", "t", justfit = TRUE) and
# test_one("sim30", "t", 999L, justfit = TRUE). Writes metaplus_sim30_t_R999.json beside this
# script. Run from the repository root (about half an hour):
#   R_LIBS=/work/rlib Rscript tests/reference_extra/robust/time_sim30_t.R
suppressPackageStartupMessages({
  library(metaplus)
  library(jsonlite)
})

out_dir <- "tests/reference_extra/robust"
stopifnot(dir.exists(out_dir))
stopifnot(packageVersion("metaplus") == "1.0.8")

loadavg <- function() trimws(readLines("/proc/loadavg", n = 1))
nproc <- trimws(system("nproc", intern = TRUE))
load_start <- loadavg()
started_utc <- format(Sys.time(), "%Y-%m-%dT%H:%M:%SZ", tz = "UTC")

SEED <- 12345
R <- 999L
sim30 <- read.csv(file.path(out_dir, "sim30.csv"), stringsAsFactors = FALSE)
stopifnot(nrow(sim30) == 30)

# fit_one("sim30", "t", justfit = TRUE)
set.seed(SEED)
fit_started <- proc.time()[["elapsed"]]
fit <- metaplus(yi = sim30$yi, sei = sim30$sei, mods = NULL, random = "t-dist",
                slab = sim30$study, cores = 1, justfit = TRUE)
fit_wall <- proc.time()[["elapsed"]] - fit_started
coef <- as.list(fit$fittedmodel@coef)
loglik <- as.numeric(logLik(fit))
fit$justfit <- FALSE  # testOutliers refuses a justfit fit; it uses only yi, sei and mods
cat(sprintf("fit: %.1f s, logLik %.8f\n", fit_wall, loglik))

# test_one("sim30", "t", 999L, justfit = TRUE)
set.seed(SEED)
started <- proc.time()[["elapsed"]]
tst <- testOutliers(fit, R = R, cores = 1)
test_wall <- proc.time()[["elapsed"]] - started
load_end <- loadavg()
cat(sprintf("testOutliers(R = %d): %.1f s, p %g, observed %g\n", R, test_wall, tst$pvalue,
            unname(tst$observed)))

sims <- unname(tst$sims)
out <- list(
  what = paste("metaplus testOutliers(R = 999) wall time, Student-t model, sim30.csv",
               "(30 studies), cores = 1; written by time_sim30_t.R"),
  metaplus_version = as.character(packageVersion("metaplus")),
  R_version = R.version.string,
  fit_call = sprintf(paste0("set.seed(%d); metaplus(yi, sei, random = \"t-dist\", cores = 1, ",
                            "justfit = TRUE)"), SEED),
  test_call = sprintf("set.seed(%d); testOutliers(fit, R = %d, cores = 1)", SEED, R),
  fit_coef = coef, fit_logLik = loglik, fit_wall_s = fit_wall,
  R = R, seed = SEED, pvalue = tst$pvalue, observed = unname(tst$observed),
  n_zero = sum(sims == 0, na.rm = TRUE), n_na = sum(is.na(sims)),
  max_sim = if (all(is.na(sims))) NA else max(sims, na.rm = TRUE),
  sims = sims,
  test_wall_s = test_wall,
  machine = list(nproc = nproc, loadavg_start = load_start, loadavg_end = load_end,
                 started_utc = started_utc,
                 finished_utc = format(Sys.time(), "%Y-%m-%dT%H:%M:%SZ", tz = "UTC"),
                 note = "one R process, cores = 1; loadavg is /proc/loadavg (1, 5, 15 min)")
)
write(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"),
      file.path(out_dir, "metaplus_sim30_t_R999.json"))
