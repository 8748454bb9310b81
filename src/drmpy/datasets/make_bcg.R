# Writes bcg.csv (shipped with drmpy) from metadat's dat.bcg.
# Source: Colditz, G. A., Brewer, T. F., Berkey, C. S., Wilson, M. E., Burdick, E., Fineberg, H. V.
# & Mosteller, F. (1994). Efficacy of BCG vaccine in the prevention of tuberculosis: Meta-analysis of
# the published literature. JAMA 271(9), 698-702; data as distributed by the R package metadat (Data
# sets for meta-analysis, licence GPL (>= 2)). The columns are dat.bcg's, unchanged.
# Run from this folder: Rscript make_bcg.R
library(metadat)
d <- dat.bcg
stopifnot(nrow(d) == 13)
write.csv(d, "bcg.csv", row.names = FALSE)
cat(sprintf("metadat %s: %d trials\n", packageVersion("metadat"), nrow(d)))
