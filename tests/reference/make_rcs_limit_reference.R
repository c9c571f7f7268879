# Reference numbers for a restricted cubic spline adjusted for a covariate with a monotone likelihood
# (tilpheno.biomarkers.splines.fit_spline(..., covariates=...)), computed with R.
#
# Run from this folder:  Rscript make_rcs_limit_reference.R
# Needs R with the packages survival and rms (Debian: r-cran-survival r-cran-rms). Writes
# rcs_limit_reference.csv next to this script; the tests read it and never need R.
#
# Data: make_reference.R's 'binary_high' case (cox_monotone_covariates_reference.csv): x is 0/1 and the 10
# patients with x = 1 have every event while they are at risk (at every event time the patients with the event
# have the highest x at risk); z is a continuous marker. coxph(Surv ~ rcs(z, k) + x) gives x a huge coefficient and
# standard error ('coefficient may be infinite') and finite estimates for the spline; those are, to within
# exp(-|coef x|), the estimates of the limit model: Surv(entry, time, event) ~ rcs(z, k), each event's risk set
# keeping only the patients with the event's x (delayed entry, as make_reference.R's limit_entry).
# Rows: one per k x fit ('coxph', 'limit') x term, with the knots, the Wald chi-squares of the spline (overall: all
# k - 1 coefficients; nonlinear: the k - 2 nonlinear ones, as anova(cph)) and R's warnings.
suppressPackageStartupMessages({
  library(survival)
  library(rms)
})
options(digits = 17)

num <- function(x) trimws(formatC(x, digits = 17, format = "g"))

limit_entry <- function(time, event, x, up) {
  et <- sort(unique(time[event == 1]))
  ext <- sapply(et, function(tk) if (up) max(x[time >= tk]) else min(x[time >= tk]))
  sapply(seq_along(x), function(i) { before <- et[ext != x[i] & et <= time[i]]; if (length(before)) max(before) else 0 })
}

d <- data.frame(
  time = c(6.7, 6.4, 8.5, 1, 6.4, 8.3, 4.5, 3.4, 5.6, 6.7, 5.9, 12.4, 16.8, 17.2, 12.6, 14.1, 12.1, 9.7, 19.4, 9.5,
           13.7, 16.4, 10.5, 11.4, 8.8, 9.4, 8.4, 10.2, 21.7, 6),
  event = c(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0),
  x = c(rep(1, 10), rep(0, 20)),
  z = c(64, 33, 58, 39, 51, 55, 44, 56, 41, 50, 64, 45, 57, 40, 58, 37, 45, 38, 57, 45, 49, 57, 64, 61, 53, 69, 64,
        53, 74, 45))
d$entry <- limit_entry(d$time, d$event, d$x, TRUE)

wald <- function(b, V) as.numeric(t(b) %*% solve(V, b))
rows <- list()
for (k in 3:5) {
  knots <- rcspline.eval(d$z, nk = k, knots.only = TRUE)
  fits <- list(coxph = function() coxph(Surv(time, event) ~ rcs(z, knots) + x, data = d, ties = "efron"),
               limit = function() coxph(Surv(entry, time, event) ~ rcs(z, knots), data = d, ties = "efron"))
  for (nm in names(fits)) {
    said <- character(0)
    fit <- withCallingHandlers(fits[[nm]](),
                               warning = function(w) { said <<- c(said, trimws(conditionMessage(w))); invokeRestart("muffleWarning") })
    b <- coef(fit)[1:(k - 1)]
    V <- vcov(fit)[1:(k - 1), 1:(k - 1)]
    rows[[length(rows) + 1]] <- data.frame(
      k = k, fit = nm, time = paste(d$time, collapse = " "), event = paste(d$event, collapse = " "),
      x = paste(d$x, collapse = " "), z = paste(d$z, collapse = " "), knots = paste(num(knots), collapse = " "),
      term = names(coef(fit)), coef = num(unname(coef(fit))), se = num(unname(sqrt(diag(vcov(fit))))),
      overall_chisq = num(wald(b, V)), nonlinear_chisq = num(wald(b[-1], V[-1, -1, drop = FALSE])),
      r_warning = paste(said, collapse = " | "))
  }
}
write.csv(do.call(rbind, rows), "rcs_limit_reference.csv", row.names = FALSE, quote = TRUE, na = "NA")
