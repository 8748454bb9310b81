# Writes curtis1998.csv from metadat 1.2.0's dat.curtis1998 (licence GPL (>= 2)):
# Curtis and Wang (1998), Ecology 79: 1353-1358, elevated CO2 and woody plant mass.
# Run from this folder: Rscript make_curtis1998.R
suppressMessages(library(metadat))
d <- dat.curtis1998
out <- data.frame(id = d$id, paper = d$paper, genus = d$genus, species = d$species, fungrp = d$fungrp,
                  co2_ambi = d$co2.ambi, co2_elev = d$co2.elev, time = d$time, method = d$method,
                  xtrt = d$xtrt, m1i = d$m1i, sd1i = d$sd1i, n1i = d$n1i, m2i = d$m2i, sd2i = d$sd2i,
                  n2i = d$n2i)
write.csv(out, "curtis1998.csv", row.names = FALSE)
