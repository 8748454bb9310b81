# Writes tests/robust/exercise.csv: metaplus's `exercise` data (Lawlor and Hopker 2001, via
# metaplus 1.0-8, GPL >= 2), the columns its vignette uses: yi = smd, sei = sqrt(varsmd)
# (as make_robust.R passes them to metaplus), duration.  Run from the repository root with the
# metaplus source's data/exercise.RData at the path given as the first argument.
args <- commandArgs(trailingOnly = TRUE)
load(args[1])
out <- data.frame(study = as.character(exercise$study), yi = sprintf("%.17g", exercise$smd),
                  sei = sprintf("%.17g", sqrt(exercise$varsmd)), duration = exercise$duration)
write.csv(out, "tests/robust/exercise.csv", row.names = FALSE)
