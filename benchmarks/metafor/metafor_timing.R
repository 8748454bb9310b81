# Timing of metafor on the models drmpy targets.
#
# Usage (from the repository root):
#   Rscript benchmarks/metafor/metafor_timing.R [path/to/seed_restoration/data.csv]
#
# Writes benchmarks/metafor/metafor_timing.txt (next to this script).
# Every large case runs in its own child Rscript under `timeout` so that a
# fit that fails, runs out of memory or runs past ~5 minutes is recorded
# instead of stopping the benchmark. Child mode: `Rscript metafor_timing.R
# --case=<name> --n=<n> [--reps=<r>]` prints one line "RESULT <seconds>".

suppressPackageStartupMessages(library(metafor))

args <- commandArgs(trailingOnly = FALSE)
script <- normalizePath(sub("^--file=", "", grep("^--file=", args, value = TRUE)[1]))
targs <- commandArgs(trailingOnly = TRUE)
getarg <- function(key, default = NULL) {
  hit <- grep(paste0("^--", key, "="), targs, value = TRUE)
  if (length(hit)) sub(paste0("^--", key, "="), "", hit[1]) else default
}

## ---------------------------------------------------------------- simulators
sim_ls <- function(n) {
  set.seed(1)
  x <- rnorm(n)
  g <- factor(sample(c("a", "b"), n, replace = TRUE), levels = c("a", "b"))
  vi <- runif(n, 0.01, 0.1)
  sigma_i <- exp(-1.5 + 0.5 * (g == "b"))
  yi <- 0.2 + 0.3 * x + rnorm(n, 0, sqrt(vi + sigma_i^2))
  data.frame(yi, vi, x, g)
}

sim_re <- function(n_es, n_study) {
  # study sizes 1..9 (mean 5), then trimmed/padded so the total is n_es
  set.seed(1)
  sizes <- sample(1:9, n_study, replace = TRUE)
  diff <- n_es - sum(sizes)
  while (diff != 0) {
    i <- sample.int(n_study, 1)
    if (diff > 0 && sizes[i] < 9) { sizes[i] <- sizes[i] + 1; diff <- diff - 1 }
    if (diff < 0 && sizes[i] > 1) { sizes[i] <- sizes[i] - 1; diff <- diff + 1 }
  }
  study <- rep(seq_len(n_study), sizes)
  x <- rnorm(n_es)
  vi <- runif(n_es, 0.01, 0.1)
  u <- rnorm(n_study, 0, 0.3)
  yi <- 0.2 + 0.3 * x + u[study] + rnorm(n_es, 0, sqrt(vi))
  data.frame(yi, vi, x, study = factor(study))
}

## ---------------------------------------------------------------- child mode
case <- getarg("case")
if (!is.null(case)) {
  n <- as.numeric(getarg("n"))
  reps <- as.integer(getarg("reps", "1"))
  if (case == "ls") {
    dat <- sim_ls(n)
    fit1 <- function() rma(yi, vi, mods = ~ x, scale = ~ g, data = dat, method = "ML")
  } else if (case == "re") {
    dat <- sim_re(n, as.numeric(getarg("studies")))
    fit1 <- function() rma.mv(yi, vi, mods = ~ x, random = ~ 1 | study, data = dat,
                              method = "ML", sparse = TRUE)
  } else stop("unknown case")
  times <- numeric(reps)
  for (r in seq_len(reps)) {
    times[r] <- system.time(fit <- fit1())[["elapsed"]]
  }
  cat("FIT", paste(format(unlist(coef(fit)), digits = 6), collapse = " "),
      "loglik", format(logLik(fit), digits = 10), "\n")
  cat("RESULT", median(times), "\n")
  quit(save = "no", status = 0)
}

## ---------------------------------------------------------------- main mode
seed_csv <- if (length(targs)) targs[1] else "/work/shared/reference/seed_restoration/data.csv"
out_txt <- file.path(dirname(script), "metafor_timing.txt")
rows <- list()
add <- function(case, n, seconds, note) {
  rows[[length(rows) + 1]] <<- data.frame(case = case, n = n, seconds = seconds, note = note,
                                          stringsAsFactors = FALSE)
  cat(sprintf("%-32s %-10s %-10s %s\n", case, n, seconds, note))
}
fmt <- function(s) if (is.na(s)) "NA" else formatC(s, format = "f", digits = 3)

## 1. seed restoration, in process
dat <- read.csv(seed_csv)
dat$habitat <- factor(dat$habitat, levels = c("grassland", "forest"))
fit_seed <- function() rma(yi, vi, mods = ~ habitat + duration, scale = ~ habitat,
                           data = dat, method = "ML")
invisible(fit_seed())  # warm-up
t_seed <- replicate(20, system.time(fit_seed())[["elapsed"]])
add("seed_restoration rma ls (in-process)", nrow(dat), fmt(median(t_seed)),
    sprintf("median of 20 fits; min %.3f max %.3f", min(t_seed), max(t_seed)))

## 1b. seed restoration, whole fresh process (median of 3)
expr <- sprintf(paste0(
  "library(metafor); dat <- read.csv('%s'); ",
  "dat$habitat <- factor(dat$habitat, levels = c('grassland','forest')); ",
  "print(rma(yi, vi, mods = ~ habitat + duration, scale = ~ habitat, data = dat, method = 'ML'))"),
  seed_csv)
t_proc <- replicate(3, {
  t0 <- Sys.time()
  system2("Rscript", c("-e", shQuote(expr)), stdout = FALSE, stderr = FALSE)
  as.numeric(difftime(Sys.time(), t0, units = "secs"))
})
add("seed_restoration fresh Rscript", nrow(dat), fmt(median(t_proc)),
    sprintf("median of 3 wall times of Rscript -e 'library(metafor); fit; print'; runs %s",
            paste(sprintf("%.3f", t_proc), collapse = ", ")))

## child runner with timeout
run_child <- function(label, n, extra = character(), reps = 1, limit = 330) {
  t0 <- Sys.time()
  out <- suppressWarnings(system2("timeout", c(limit, "Rscript", shQuote(script),
                                               extra, paste0("--n=", n), paste0("--reps=", reps)),
                                  stdout = TRUE, stderr = TRUE))
  wall <- as.numeric(difftime(Sys.time(), t0, units = "secs"))
  status <- attr(out, "status")
  res <- grep("^RESULT", out, value = TRUE)
  if (length(res)) {
    s <- as.numeric(strsplit(res, " ")[[1]][2])
    fitline <- sub("^FIT ", "", grep("^FIT", out, value = TRUE))
    note <- paste0(if (reps > 1) sprintf("median of %d fits", reps) else "one fit",
                   " (fit only, data simulated beforehand); coef/loglik: ", fitline)
    add(label, format(n, scientific = TRUE), fmt(s), note)
    return(s)
  }
  if (!is.null(status) && status == 124) {
    add(label, format(n, scientific = TRUE), "NA",
        sprintf("did not finish: killed after %d s timeout", limit))
  } else {
    msg <- gsub("[\r\n]+", " ", paste(tail(out, 3), collapse = " "))
    add(label, format(n, scientific = TRUE), "NA",
        sprintf("FAILED after %.1f s (exit %s): %s", wall, status, substr(msg, 1, 200)))
  }
  NA
}

## 2. location-scale, diagonal V
t_ls <- c()
for (n in c(1e3, 1e4, 1e5)) {
  t_ls[as.character(n)] <- run_child("sim location-scale rma ML", n, "--case=ls",
                                     reps = if (n <= 1e3) 3 else 1)
}
if (!is.na(t_ls["1e+05"]) && t_ls["1e+05"] < 60) {
  run_child("sim location-scale rma ML", 1e6, "--case=ls")
} else {
  add("sim location-scale rma ML", "1e+06", "NA", "skipped: n = 1e5 did not finish in under 60 s")
}

## 3. random effects (sparse rma.mv)
t_re1 <- run_child("sim rma.mv ~1|study sparse ML", 1e4, c("--case=re", "--studies=2000"))
t_re2 <- run_child("sim rma.mv ~1|study sparse ML", 1e5, c("--case=re", "--studies=20000"))

## write table
tab <- do.call(rbind, rows)
w <- c(max(nchar(tab$case), 4), max(nchar(tab$n), 1), max(nchar(tab$seconds), 7))
line <- function(a, b, c, d) sprintf("%-*s  %-*s  %*s  %s", w[1], a, w[2], b, w[3], c, d)
hdr <- c(
  "metafor timing (benchmarks/metafor/metafor_timing.R)",
  paste0("date:    ", format(Sys.time(), "%Y-%m-%d %H:%M:%S %Z")),
  paste0("R:       ", R.version.string),
  paste0("metafor: ", as.character(packageVersion("metafor"))),
  paste0("machine: ", parallel::detectCores(), " cores (nproc), ",
         tryCatch(sub("model name\\s*:\\s*", "", grep("model name", readLines("/proc/cpuinfo"), value = TRUE)[1]),
                  error = function(e) "unknown CPU"),
         ", ", tryCatch(sprintf("%.0f GiB RAM", as.numeric(strsplit(trimws(sub("MemTotal:", "", grep("MemTotal", readLines("/proc/meminfo"), value = TRUE))), " +")[[1]][1]) / 2^20),
                        error = function(e) "unknown RAM")),
  paste0("BLAS:    ", tryCatch(La_library(), error = function(e) "unknown")),
  "seconds = elapsed wall time; large cases run in a child Rscript with a 330 s timeout.",
  ""
)
body <- c(line("case", "n", "seconds", "note"),
          line(strrep("-", w[1]), strrep("-", w[2]), strrep("-", w[3]), "----"),
          mapply(line, tab$case, tab$n, tab$seconds, tab$note))
writeLines(c(hdr, body), out_txt)
cat("\nwrote", out_txt, "\n")
