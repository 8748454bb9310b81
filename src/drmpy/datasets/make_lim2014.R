# Writes lim2014.csv (shipped with drmpy) from metadat's dat.lim2014$m_o_size.
# Source: Lim, J. N., Senior, A. M. & Nakagawa, S. (2014). Heterogeneity in individual quality and
# reproductive trade-offs within species. Evolution 68(8), 2306-2318; data as distributed by the R
# package metadat (Data sets for meta-analysis, licence GPL (>= 2)).
# Run from this folder: Rscript make_lim2014.R
library(metadat)
d <- dat.lim2014$m_o_size
stopifnot(nrow(d) == 357)
# Fisher z of the correlation between maternal size and offspring size, and its sampling variance
yi <- atanh(d$ri)
vi <- 1 / (d$ni - 3)
year <- suppressWarnings(as.numeric(substr(d$year, 1, 4)))  # "2000a" -> 2000; "unpub" / NA -> NA
out <- data.frame(es_id = seq_len(nrow(d)), article = d$article, species = d$species,
                  amniotes = d$amniotes, environment = d$environment, reprounit = d$reprounit,
                  year = year, ri = d$ri, ni = d$ni, yi = yi, vi = vi)
write.csv(out, "lim2014.csv", row.names = FALSE)
cat(sprintf("metadat %s: %d rows, %d articles\n", packageVersion("metadat"), nrow(out),
            length(unique(out$article))))
