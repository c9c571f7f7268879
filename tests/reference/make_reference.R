# Reference numbers for tilpheno's biomarker statistics, computed with R.
#
# Run from this folder:  Rscript make_reference.R
# Needs R with the packages survival, maxstat, rms and riskRegression (Debian: r-cran-survival r-cran-maxstat
# r-cran-rms r-cran-riskregression).
# Writes *_reference.csv next to this script; the tests read those files and never need R.
# Datasets: survival's lung and veteran, a few small hand-made curves (edge cases of the
# median rule), and the simulated TIL cohort (til_cohort_*.csv, from make_til_cohort.py).
suppressPackageStartupMessages({
  library(survival)
  library(maxstat)
  library(rms)
})
options(digits = 17)

num <- function(x) trimws(formatC(x, digits = 17, format = "g"))
write_ref <- function(df, name) {
  for (j in seq_along(df)) if (is.numeric(df[[j]])) df[[j]] <- num(df[[j]])
  write.csv(df, name, row.names = FALSE, quote = TRUE, na = "NA")
}

lung2 <- data.frame(time = lung$time, event = lung$status - 1, age = lung$age, sex = lung$sex,
                    ph_ecog = lung$ph.ecog)
vet2 <- data.frame(time = veteran$time, event = veteran$status, trt = veteran$trt,
                   karno = veteran$karno, age = veteran$age, celltype = as.character(veteran$celltype))
write.csv(lung2, "lung.csv", row.names = FALSE)
write.csv(vet2, "veteran.csv", row.names = FALSE)

til <- merge(read.csv("til_cohort_outcomes.csv"), read.csv("til_cohort_phenotypes.csv"), by = "product_id")
til <- til[order(til$product_id), ]
markers <- c("til_dose_cells", "cd8_pct_of_cd3", "cd8pd1_pct_of_cd8", "cd4foxp3_pct_of_cd4", "cd3_pct_of_live_lymph")

edge <- list(
  flat_half = data.frame(time = c(1, 2, 3, 4), event = c(1, 1, 1, 1)),
  ends_at_half = data.frame(time = c(1, 2, 3, 4), event = c(1, 1, 0, 0)),
  ties_censored = data.frame(time = c(1, 2, 2, 3, 4, 5, 5, 6), event = c(1, 1, 0, 1, 0, 1, 1, 0)),
  never_half = data.frame(time = c(1, 2, 3, 4, 5), event = c(1, 0, 0, 0, 0))
)

# ---- Kaplan-Meier: median + CI per conf.type, landmark rate, reverse-KM follow-up ----
km_rows <- list()
km_one <- function(dataset, endpoint, grouping, group, time, event, landmark) {
  out <- list()
  rev <- survfit(Surv(time, 1 - event) ~ 1)
  fu <- quantile(rev, probs = 0.5, conf.int = FALSE)
  for (ct in c("log", "log-log", "plain")) {
    f <- survfit(Surv(time, event) ~ 1, conf.type = ct)
    q <- quantile(f, probs = 0.5)
    s <- summary(f, times = landmark)
    has <- length(s$surv) == 1
    out[[length(out) + 1]] <- data.frame(
      dataset = dataset, endpoint = endpoint, grouping = grouping, group = group, conf_type = ct,
      n = length(time), events = sum(event),
      median = unname(q$quantile), median_ci_low = unname(q$lower), median_ci_high = unname(q$upper),
      landmark = landmark, rate = if (has) s$surv else NA, rate_ci_low = if (has) s$lower else NA,
      rate_ci_high = if (has) s$upper else NA, median_followup = unname(fu))
  }
  do.call(rbind, out)
}
add_km <- function(dataset, endpoint, grouping, time, event, group, landmark) {
  km_rows[[length(km_rows) + 1]] <<- km_one(dataset, endpoint, grouping, "all", time, event, landmark)
  if (!is.null(group)) for (g in sort(unique(group))) {
    k <- group == g
    km_rows[[length(km_rows) + 1]] <<- km_one(dataset, endpoint, grouping, as.character(g), time[k], event[k], landmark)
  }
}
add_km("lung", "os", "sex", lung2$time, lung2$event, lung2$sex, 365)
add_km("veteran", "os", "celltype", vet2$time, vet2$event, vet2$celltype, 100)
add_km("veteran", "os", "trt", vet2$time, vet2$event, vet2$trt, 100)
for (ep in c("pfs", "os")) {
  tm <- til[[paste0(ep, "_months")]]; ev <- til[[paste0(ep, "_event")]]
  add_km("til", ep, "cd8_pct_of_cd3_median", tm, ev,
         ifelse(til$cd8_pct_of_cd3 <= median(til$cd8_pct_of_cd3), "low", "high"), 12)
}
for (nm in names(edge)) add_km(nm, "t", "none", edge[[nm]]$time, edge[[nm]]$event, NULL, 2.5)
# random small datasets with integer times: many ties and flat steps at exactly 0.5
set.seed(2024)
rand <- do.call(rbind, lapply(1:40, function(i) {
  n <- sample(c(4:12, 20, 30, 50), 1)
  data.frame(dataset = paste0("random", i), time = pmax(1, round(rexp(n, 1 / 8))),
             event = rbinom(n, 1, runif(1, 0.4, 1)), x = sample(1:6, n, replace = TRUE),
             z = round(rnorm(n), 1))
}))
write.csv(rand, "random_data.csv", row.names = FALSE)
for (nm in unique(rand$dataset)) {
  d <- rand[rand$dataset == nm, ]
  if (sum(d$event) > 0) add_km(nm, "t", "none", d$time, d$event, NULL, 6)
}
write_ref(do.call(rbind, km_rows), "km_reference.csv")

# ---- log-rank (survdiff) ----
lr <- function(dataset, endpoint, grouping, time, event, group) {
  s <- survdiff(Surv(time, event) ~ group)
  data.frame(dataset = dataset, endpoint = endpoint, grouping = grouping, chisq = s$chisq,
             df = length(s$n) - 1, p = pchisq(s$chisq, length(s$n) - 1, lower.tail = FALSE))
}
lr_rows <- list(
  lr("lung", "os", "sex", lung2$time, lung2$event, lung2$sex),
  lr("veteran", "os", "celltype", vet2$time, vet2$event, vet2$celltype),
  lr("veteran", "os", "trt", vet2$time, vet2$event, vet2$trt))
for (ep in c("pfs", "os")) for (mk in markers) {
  tm <- til[[paste0(ep, "_months")]]; ev <- til[[paste0(ep, "_event")]]
  lr_rows[[length(lr_rows) + 1]] <- lr("til", ep, paste0(mk, "_median"), tm, ev,
                                       ifelse(til[[mk]] <= median(til[[mk]]), "low", "high"))
}
write_ref(do.call(rbind, lr_rows), "logrank_reference.csv")

# ---- Cox models (Efron), cox.zph(transform = "km") ----
cox_rows <- list(); model_rows <- list(); zph_rows <- list()
add_cox <- function(dataset, model, formula, data) {
  environment(formula) <- environment()  # model.frame and cox.zph look the data up here
  fit <- coxph(formula, data = data, ties = "efron", model = TRUE, x = TRUE)
  s <- summary(fit)$coefficients
  ci <- summary(fit)$conf.int  # Wald: exp(coef -+ qnorm(0.975) se)
  cox_rows[[length(cox_rows) + 1]] <<- data.frame(dataset = dataset, model = model, variable = rownames(s),
    coef = s[, "coef"], se = s[, "se(coef)"], p = s[, "Pr(>|z|)"], hr = ci[, "exp(coef)"],
    hr_ci_low = ci[, "lower .95"], hr_ci_high = ci[, "upper .95"])
  lrt <- 2 * diff(fit$loglik)
  model_rows[[length(model_rows) + 1]] <<- data.frame(dataset = dataset, model = model, n = fit$n,
    events = fit$nevent, loglik = fit$loglik[2], lr_chisq = lrt, lr_df = length(fit$coefficients),
    lr_p = pchisq(lrt, length(fit$coefficients), lower.tail = FALSE),
    concordance = unname(fit$concordance["concordance"]), concordance_se = unname(fit$concordance["std"]),
    wald_chisq = unname(fit$wald.test), score_chisq = unname(fit$score),
    tied_x = unname(fit$concordance["tied.x"]))
  z <- cox.zph(fit, transform = "km")$table
  zph_rows[[length(zph_rows) + 1]] <<- data.frame(dataset = dataset, model = model, term = rownames(z),
    chisq = z[, "chisq"], df = z[, "df"], p = z[, "p"])
}
add_cox("lung", "age+sex", Surv(time, event) ~ age + sex, lung2)
add_cox("lung", "age+sex+ph_ecog", Surv(time, event) ~ age + sex + ph_ecog, lung2)
add_cox("veteran", "karno+age+trt+celltype", Surv(time, event) ~ karno + age + trt + celltype, vet2)
add_cox("veteran", "karno", Surv(time, event) ~ karno, vet2)
# discrete covariates only: many patients share a linear predictor (concordance ties)
add_cox("veteran", "trt+celltype", Surv(time, event) ~ trt + celltype, vet2)
add_cox("lung", "sex+ph_ecog", Surv(time, event) ~ sex + ph_ecog, lung2)
til$sex_f <- til$sex
for (ep in c("pfs", "os")) {
  d <- data.frame(time = til[[paste0(ep, "_months")]], event = til[[paste0(ep, "_event")]], til)
  for (mk in markers) add_cox(paste0("til_", ep), mk, as.formula(paste("Surv(time, event) ~", mk)), d)
  add_cox(paste0("til_", ep), "cd8+cd8pd1+age+sex+ecog",
          Surv(time, event) ~ cd8_pct_of_cd3 + cd8pd1_pct_of_cd8 + age + sex + ecog, d)
}
for (nm in paste0("random", 1:40)) {
  d <- rand[rand$dataset == nm, ]
  if (nrow(d) >= 20 && sum(d$event) >= 5) add_cox(nm, "x+z", Surv(time, event) ~ x + z, d)
}
write_ref(do.call(rbind, cox_rows), "cox_reference.csv")
write_ref(do.call(rbind, model_rows), "cox_models_reference.csv")
write_ref(do.call(rbind, zph_rows), "zph_reference.csv")

# ---- maxstat: maximally selected log-rank statistics ----
ms_rows <- list(); stats_rows <- list()
add_ms <- function(dataset, endpoint, marker, time, event, x) {
  d <- data.frame(time = time, event = event, x = x)
  m92 <- maxstat.test(Surv(time, event) ~ x, data = d, smethod = "LogRank", pmethod = "Lau92",
                      minprop = 0.1, maxprop = 0.9)
  m94 <- maxstat.test(Surv(time, event) ~ x, data = d, smethod = "LogRank", pmethod = "Lau94",
                      minprop = 0.1, maxprop = 0.9)
  ms_rows[[length(ms_rows) + 1]] <<- data.frame(dataset = dataset, endpoint = endpoint, marker = marker,
    statistic = unname(m94$statistic), cutpoint = unname(m94$estimate), n_low = sum(x <= m94$estimate),
    p_lau92 = m92$p.value, p_lau94 = m94$p.value, n_cuts = length(m94$cuts))
  stats_rows[[length(stats_rows) + 1]] <<- data.frame(dataset = dataset, endpoint = endpoint,
    marker = marker, cut = m94$cuts, stat = m94$stats)
}
l3 <- na.omit(lung2[, c("time", "event", "age", "ph_ecog")])
add_ms("lung", "os", "age", lung2$time, lung2$event, lung2$age)
add_ms("lung", "os", "ph_ecog", l3$time, l3$event, l3$ph_ecog)
add_ms("veteran", "os", "karno", vet2$time, vet2$event, vet2$karno)
add_ms("veteran", "os", "age", vet2$time, vet2$event, vet2$age)
for (ep in c("pfs", "os")) for (mk in markers)
  add_ms("til", ep, mk, til[[paste0(ep, "_months")]], til[[paste0(ep, "_event")]], til[[mk]])
for (nm in paste0("random", 1:40)) {
  d <- rand[rand$dataset == nm, ]
  if (nrow(d) >= 20 && sum(d$event) >= 2) add_ms(nm, "t", "z", d$time, d$event, d$z)
}
write_ref(do.call(rbind, ms_rows), "maxstat_reference.csv")
write_ref(do.call(rbind, stats_rows), "maxstat_stats_reference.csv")
# Monte Carlo permutation p-values (maxstat's condMC, B = 20000): a statistical cross-check of
# tilpheno's permutation p (different random streams, so equal only up to Monte Carlo error)
set.seed(20240601)
cmc <- function(dataset, endpoint, marker, time, event, x) {
  d <- data.frame(time = time, event = event, x = x)
  data.frame(dataset = dataset, endpoint = endpoint, marker = marker, B = 20000,
             p_condmc = maxstat.test(Surv(time, event) ~ x, data = d, smethod = "LogRank", pmethod = "condMC",
                                     minprop = 0.1, maxprop = 0.9, B = 20000)$p.value)
}
write_ref(rbind(
  cmc("lung", "os", "age", lung2$time, lung2$event, lung2$age),
  cmc("veteran", "os", "age", vet2$time, vet2$event, vet2$age),
  cmc("til", "pfs", "til_dose_cells", til$pfs_months, til$pfs_event, til$til_dose_cells),
  cmc("til", "os", "cd8pd1_pct_of_cd8", til$os_months, til$os_event, til$cd8pd1_pct_of_cd8)),
  "maxstat_condmc_reference.csv")
sc <- suppressWarnings(exactRankTests::cscores(Surv(lung2$time, lung2$event), type = "LogRank"))
write_ref(data.frame(time = lung2$time, event = lung2$event, score = as.numeric(sc)), "logrank_scores_reference.csv")

# ---- response rates (Clopper-Pearson) and responders table tests on the TIL cohort ----
resp <- til$best_response
ci <- function(k, n) binom.test(k, n)$conf.int
orr <- sum(resp %in% c("CR", "PR")); dcr <- sum(resp %in% c("CR", "PR", "SD")); n <- length(resp)
write_ref(data.frame(metric = c("ORR", "DCR"), n = n, count = c(orr, dcr), rate = c(orr, dcr) / n,
                     ci_low = c(ci(orr, n)[1], ci(dcr, n)[1]), ci_high = c(ci(orr, n)[2], ci(dcr, n)[2])),
          "response_reference.csv")
responder <- resp %in% c("CR", "PR")
rr <- list()
for (v in c(markers, "age")) {
  x <- til[[v]]
  tt <- t.test(x[responder], x[!responder]); ww <- suppressWarnings(wilcox.test(x[responder], x[!responder]))
  rr[[length(rr) + 1]] <- data.frame(variable = v, welch_p = tt$p.value, mannwhitney_p = ww$p.value,
    t_statistic = unname(tt$statistic), t_df = unname(tt$parameter), mean_diff_ci_low = tt$conf.int[1],
    mean_diff_ci_high = tt$conf.int[2], w_statistic = unname(ww$statistic))
}
write_ref(do.call(rbind, rr), "responders_reference.csv")
tab_sex <- table(til$sex, responder); tab_ecog <- table(til$ecog, responder)
write_ref(data.frame(variable = c("sex", "ecog"),
  chisq_p = c(chisq.test(tab_sex)$p.value, suppressWarnings(chisq.test(tab_ecog)$p.value)),
  fisher_p = c(fisher.test(tab_sex)$p.value, fisher.test(tab_ecog)$p.value),
  odds_ratio = c(unname(fisher.test(tab_sex)$estimate), NA),
  or_ci_low = c(fisher.test(tab_sex)$conf.int[1], NA), or_ci_high = c(fisher.test(tab_sex)$conf.int[2], NA)),
  "responders_categorical_reference.csv")
# ---- survfit table (summary(censored = TRUE)), numbers at risk, survdiff observed/expected ----
kt <- list(); ar <- list(); oe <- list()
add_kmtab <- function(dataset, group, time, event, breaks) {
  for (ct in c("log", "log-log", "plain")) {
    s <- summary(survfit(Surv(time, event) ~ 1, conf.type = ct), censored = TRUE)
    kt[[length(kt) + 1]] <<- data.frame(dataset = dataset, group = group, conf_type = ct, time = s$time,
      n_risk = s$n.risk, n_event = s$n.event, n_censor = s$n.censor, surv = s$surv, std_err = s$std.err,
      lower = s$lower, upper = s$upper)
  }
  a <- summary(survfit(Surv(time, event) ~ 1), times = breaks, extend = TRUE)
  ar[[length(ar) + 1]] <<- data.frame(dataset = dataset, group = group, time = a$time, n_risk = a$n.risk)
}
for (g in sort(unique(lung2$sex))) { k <- lung2$sex == g
  add_kmtab("lung", as.character(g), lung2$time[k], lung2$event[k], seq(0, 1000, 200)) }
add_kmtab("til_pfs", "all", til$pfs_months, til$pfs_event, seq(0, 30, 6))
add_kmtab("til_os", "all", til$os_months, til$os_event, seq(0, 48, 12))
for (nm in names(edge)) add_kmtab(nm, "all", edge[[nm]]$time, edge[[nm]]$event, c(0, 1, 2.5, 4, 10))
write_ref(do.call(rbind, kt), "km_table_reference.csv")
write_ref(do.call(rbind, ar), "atrisk_reference.csv")
add_oe <- function(dataset, time, event, group) {
  s <- survdiff(Surv(time, event) ~ group)
  oe[[length(oe) + 1]] <<- data.frame(dataset = dataset, group = sub("group=", "", names(s$n)),
                                      n = as.numeric(s$n), observed = s$obs, expected = s$exp)
}
add_oe("lung_sex", lung2$time, lung2$event, lung2$sex)
add_oe("veteran_celltype", vet2$time, vet2$event, vet2$celltype)
add_oe("til_pfs_cd8_median", til$pfs_months, til$pfs_event,
       ifelse(til$cd8_pct_of_cd3 <= median(til$cd8_pct_of_cd3), "low", "high"))
write_ref(do.call(rbind, oe), "logrank_oe_reference.csv")

# ---- multiplicity: p.adjust ----
set.seed(7)
pv <- list(uniform = runif(10), small = c(0.001, 0.002, 0.02, 0.03, 0.04, 0.5),
           ties = c(0.01, 0.01, 0.04, 0.04, 0.2, 0.9, 1), with_na = c(0.03, NA, 0.001, 0.6, NA, 0.049))
write_ref(do.call(rbind, lapply(names(pv), function(nm) data.frame(set = nm, p = pv[[nm]],
  holm = p.adjust(pv[[nm]], "holm"), bh = p.adjust(pv[[nm]], "BH")))), "padjust_reference.csv")

# ---- restricted cubic splines: rms::cph(Surv ~ rcs(x, k)), knots, coefficients, Wald tests, curve ----
sp <- list(); spc <- list()
add_rcs <- function(dataset, xname, time, event, x, k) {
  dd <- data.frame(time = time, event = event, x = x)
  knots <- rcspline.eval(x, nk = k, knots.only = TRUE)
  # cph stops at a relative log-likelihood change of 1e-4 by default (eps): converge fully
  f <- cph(Surv(time, event) ~ rcs(x, knots), data = dd, x = TRUE, y = TRUE, eps = 1e-12, tol = 1e-14, iter.max = 100)
  a <- anova(f)
  grid <- seq(min(x), max(x), length.out = 7)
  B <- rcspline.eval(grid, knots = knots, inclx = TRUE)
  lp <- drop(B %*% coef(f)); v <- vcov(f)
  sp[[length(sp) + 1]] <<- data.frame(dataset = dataset, marker = xname, k = k, term = seq_along(coef(f)),
    knots = paste(num(knots), collapse = ";"), coef = unname(coef(f)),
    se = unname(sqrt(diag(v))), overall_chisq = a[1, 1], overall_df = a[1, 2], overall_p = a[1, 3],
    nonlin_chisq = a[2, 1], nonlin_df = a[2, 2], nonlin_p = a[2, 3], loglik = f$loglik[2],
    n_knots = length(knots))
  spc[[length(spc) + 1]] <<- data.frame(dataset = dataset, marker = xname, k = k, x = grid, lp = lp,
    se = sqrt(rowSums((B %*% v) * B)))
}
for (k in 3:5) {
  add_rcs("lung", "age", lung2$time, lung2$event, lung2$age, k)
  add_rcs("veteran", "karno", vet2$time, vet2$event, vet2$karno, k)
  for (ep in c("pfs", "os")) for (mk in c("cd8_pct_of_cd3", "cd4foxp3_pct_of_cd4", "til_dose_cells"))
    add_rcs(paste0("til_", ep), if (mk == "til_dose_cells") "til_dose_1e9" else mk, til[[paste0(ep, "_months")]],
            til[[paste0(ep, "_event")]], if (mk == "til_dose_cells") til[[mk]] / 1e9 else til[[mk]], k)
}
write_ref(do.call(rbind, sp), "rcs_reference.csv")
write_ref(do.call(rbind, spc), "rcs_curve_reference.csv")

# ---- bootstrap internal validation: rms::validate(cph, B = 200), 20 seeds (Monte Carlo spread) ----
vr <- list()
add_val <- function(dataset, model, formula, data) {
  environment(formula) <- environment()
  f <- cph(formula, data = data, x = TRUE, y = TRUE, surv = TRUE)
  for (s in 1:20) {
    set.seed(s)
    v <- validate(f, B = 200)
    vr[[length(vr) + 1]] <<- data.frame(dataset = dataset, model = model, seed = s,
      dxy_orig = v["Dxy", "index.orig"], dxy_optimism = v["Dxy", "optimism"],
      dxy_corrected = v["Dxy", "index.corrected"], slope_optimism = v["Slope", "optimism"],
      slope_corrected = v["Slope", "index.corrected"], B = v["Dxy", "n"])
  }
}
add_val("lung", "age+sex+ph_ecog", Surv(time, event) ~ age + sex + ph_ecog, na.omit(lung2))
for (ep in c("pfs", "os")) {
  d <- data.frame(time = til[[paste0(ep, "_months")]], event = til[[paste0(ep, "_event")]], til)
  add_val(paste0("til_", ep), "cd8+cd8pd1+age+sex+ecog",
          Surv(time, event) ~ cd8_pct_of_cd3 + cd8pd1_pct_of_cd8 + age + sex + ecog, d)
}
write_ref(do.call(rbind, vr), "validate_reference.csv")
# predicted survival at a time from Efron Cox fits (survfit.coxph), for calibration at a time
ps <- list()
for (ep in c("pfs", "os")) {
  d <- data.frame(time = til[[paste0(ep, "_months")]], event = til[[paste0(ep, "_event")]], til)
  f <- coxph(Surv(time, event) ~ cd8_pct_of_cd3 + cd8pd1_pct_of_cd8 + age + ecog, data = d, ties = "efron")
  s <- summary(survfit(f, newdata = d[1:8, ]), times = 6)
  ps[[length(ps) + 1]] <- data.frame(dataset = paste0("til_", ep), patient = 1:8, time = 6, surv = as.numeric(s$surv))
}
write_ref(do.call(rbind, ps), "predicted_survival_reference.csv")

# ---- response as a time-dependent covariate: coxph on start-stop data ----
set.seed(11)
nr <- 80
tv <- data.frame(id = 1:nr, os = round(rexp(nr, 1 / 14), 1) + 0.5, event = rbinom(nr, 1, 0.8))
tv$resp_time <- ifelse(runif(nr) < 0.4, round(runif(nr, 1, 8), 1), NA)
tv$resp_time[!is.na(tv$resp_time) & tv$resp_time >= tv$os] <- NA
tv$age <- round(rnorm(nr, 40, 12))
write.csv(tv, "response_timevarying.csv", row.names = FALSE, na = "")
ss <- tmerge(tv[, c("id", "age")], tv, id = id, death = event(os, event))
ss <- tmerge(ss, tv, id = id, responder = tdc(resp_time))
tdr <- list()
for (form in c("responder", "responder+age")) {
  fit <- coxph(as.formula(paste("Surv(tstart, tstop, death) ~", form)), data = ss, ties = "efron")
  s <- summary(fit)$coefficients
  tdr[[length(tdr) + 1]] <- data.frame(model = form, variable = rownames(s), coef = s[, "coef"],
                                       se = s[, "se(coef)"], p = s[, "Pr(>|z|)"], loglik = fit$loglik[2])
}
write_ref(do.call(rbind, tdr), "timevarying_reference.csv")
# landmark at 3 months: patients alive (os > 3) classified by response by then, log-rank and Cox
lm3 <- tv[tv$os > 3, ]; lm3$resp <- as.numeric(!is.na(lm3$resp_time) & lm3$resp_time <= 3)
lf <- coxph(Surv(os - 3, event) ~ resp, data = lm3)
write_ref(data.frame(landmark = 3, n = nrow(lm3), n_resp = sum(lm3$resp), coef = unname(coef(lf)),
                     se = unname(sqrt(diag(vcov(lf)))), logrank_chisq = survdiff(Surv(os, event) ~ resp, lm3)$chisq),
          "landmark_reference.csv")

# ---- sample size of a validation study: Schoenfeld (two groups), Hsieh-Lavori (continuous) ----
pl <- expand.grid(hr = c(0.5, 0.7, 1.5, 2), alpha = c(0.05, 0.01), power = c(0.8, 0.9), prop = c(0.5, 0.3),
                  sd = c(1, 12.5), p_event = c(0.8, 0.6))
zz <- (qnorm(1 - pl$alpha / 2) + qnorm(pl$power))^2
pl$schoenfeld_events <- zz / (pl$prop * (1 - pl$prop) * log(pl$hr)^2)
pl$hsieh_events <- zz / (pl$sd^2 * log(pl$hr)^2)
pl$schoenfeld_patients <- ceiling(ceiling(pl$schoenfeld_events) / pl$p_event)
pl$hsieh_patients <- ceiling(ceiling(pl$hsieh_events) / pl$p_event)
write_ref(pl, "planning_reference.csv")

# ---- Cox models whose events all fall at one time: coxph fits them, cox.zph stops (singular) ----
one <- data.frame(time = c(1, 2, 3, 4, 5, 6, 7, 8), x = c(5, 1, 3, 2, 8, 4, 6, 7))
one_rows <- list()
for (case in c("one_event", "two_tied_events")) {
  d <- one
  d$event <- if (case == "one_event") c(0, 0, 1, 0, 0, 0, 0, 0) else c(0, 1, 1, 0, 0, 0, 0, 0)
  if (case == "two_tied_events") d$time[3] <- 2
  fit <- coxph(Surv(time, event) ~ x, data = d, ties = "efron")
  zph_fails <- inherits(try(cox.zph(fit, transform = "km"), silent = TRUE), "try-error")
  one_rows[[length(one_rows) + 1]] <- data.frame(case = case, time = paste(d$time, collapse = " "),
    event = paste(d$event, collapse = " "), x = paste(d$x, collapse = " "), coef = unname(coef(fit)),
    se = unname(sqrt(diag(vcov(fit)))), zph_fails = zph_fails)
}
write_ref(do.call(rbind, one_rows), "cox_one_event_time_reference.csv")

# ---- small messy cohorts (n 15-40: whole-month ties, times of 0, a marker with a floor at 0 and a ceiling
# at 100): rms::rcs knots (rcspline.eval's special cases), cph(Surv ~ rcs(x, k)) and rms::validate given
# its own bootstrap samples (written out, so the test replays them: equal, not just within Monte Carlo error)
set.seed(99)
messy_cohort <- function(n, name) {
  x <- round(runif(n, 0.5, 95), 1)
  x[sample(n, 4)] <- 0; x[sample(which(x > 0), 3)] <- 100
  z <- sample(c(0, 1), n, replace = TRUE)
  time <- pmax(0, round(rexp(n, exp(0.02 * x + 0.5 * z) / 20)))
  event <- rbinom(n, 1, 0.75)
  time[sample(n, 2)] <- 0; event[time == 0][1] <- 0
  data.frame(cohort = name, time = time, event = event, x = x, z = z)
}
messy <- rbind(messy_cohort(40, "m40"), messy_cohort(25, "m25"), messy_cohort(15, "m15"))
write.csv(messy, "messy_cohorts.csv", row.names = FALSE)
set.seed(5)
knot_cases <- list(
  distinct12 = round(rnorm(12, 50, 10), 1), distinct40 = round(rnorm(40, 50, 10), 1),
  floor_and_ceiling40 = c(rep(0, 5), round(runif(31, 0.1, 99), 2), rep(100, 4)),
  few_distinct32 = rep(c(1, 2, 3, 4, 5, 6), c(5, 6, 7, 6, 5, 3)),
  ties25 = sample(c(2, 5, 7, 9, 12, 15, 20, 30), 25, replace = TRUE),
  floor120 = c(rep(0, 10), round(runif(110, 0.1, 30), 2)),
  m40 = messy$x[messy$cohort == "m40"], m25 = messy$x[messy$cohort == "m25"],
  # 5 to 9 values (rcspline.eval needs 6; below 10 its "5th smallest" outer knot lies at or above its
  # "5th largest": sorted anyway, or too few unique knots, an error), few distinct values in 7, and 9
  # values whose middle quantile R's index arithmetic (1 + (n - 1) p) puts exactly on the 5th value
  small5 = round(rnorm(5, 50, 10), 1), small6 = round(rnorm(6, 50, 10), 1), small7 = round(rnorm(7, 50, 10), 1),
  small8 = round(rnorm(8, 50, 10), 1), small9 = round(rnorm(9, 50, 10), 1), few_distinct7 = c(1, 1, 2, 3, 4, 5, 5),
  steps9 = seq_len(9) * 1.5 + rep(c(0.1, 0.3), length.out = 9),
  # an 81 % floor (a marker 0 in most products, e.g. a rare subset): 49 of 60 patients (the demo cohort's size)
  # with the rest distinct, with pairs, with a 5 % ceiling too, and 486 of 600 (above 100 values left past the
  # floor); 26 of 31 leaves 4 values past the next one, where rcspline.eval's "5th largest" index is 0 (3 knots:
  # R stops, 'replacement has length zero'); 49 of 60 with a middle value held by 3 (5 %: no floor rule, every
  # quantile 0: R stops)
  floor81_60 = c(rep(0, 49), round(rexp(11, 1 / 8), 2)),
  floor81_pairs60 = c(rep(0, 49), rep(round(rexp(5, 1 / 8), 2), each = 2), 35),
  floor81_ceiling60 = c(rep(0, 49), round(runif(8, 0.1, 99), 2), rep(100, 3)),
  floor81_600 = c(rep(0, 486), round(rexp(114, 1 / 8), 3)),
  floor81_31 = c(rep(0, 26), round(rexp(5, 1 / 8), 2)),
  floor81_tied60 = c(rep(0, 49), rep(2.5, 3), round(rexp(8, 1 / 8), 2)))
kn <- list()
for (nm in names(knot_cases)) for (k in 3:5) {
  warned <- FALSE
  r_error <- ""   # rcspline.eval's stop(): its message, or "error" when it has none
  knots <- tryCatch(withCallingHandlers(rcspline.eval(knot_cases[[nm]], nk = k, knots.only = TRUE),
                                        warning = function(w) { warned <<- TRUE; invokeRestart("muffleWarning") }),
                    error = function(e) { r_error <<- if (nzchar(conditionMessage(e))) conditionMessage(e) else "error"; NULL })
  kn[[length(kn) + 1]] <- data.frame(case = nm, k = k, x = paste(num(knot_cases[[nm]]), collapse = ";"),
                                     knots = paste(num(knots), collapse = ";"), r_warned = warned, r_error = r_error)
}
write_ref(do.call(rbind, kn), "rcs_knots_reference.csv")
# cph(Surv ~ rcs(x, k)) of a marker with an 81 % floor: the TIL cohort's 60 PFS times and events (in product_id
# order) with the 60 values of floor81_60 and floor81_ceiling60 as the marker
fl <- list()
for (nm in c("floor81_60", "floor81_ceiling60")) for (k in 3:5) {
  dd <- data.frame(time = til$pfs_months, event = til$pfs_event, x = knot_cases[[nm]])
  f <- cph(Surv(time, event) ~ rcs(x, k), data = dd, eps = 1e-12, tol = 1e-14, iter.max = 100)
  a <- anova(f)
  fl[[length(fl) + 1]] <- data.frame(case = nm, k = k, term = seq_along(coef(f)),
    knots = paste(num(f$Design$parms$x), collapse = ";"), coef = unname(coef(f)), se = unname(sqrt(diag(vcov(f)))),
    overall_chisq = a[1, 1], overall_df = a[1, 2], nonlin_chisq = a[2, 1], nonlin_df = a[2, 2])
}
write_ref(do.call(rbind, fl), "rcs_floor_reference.csv")
mr <- list()
for (co in c("m40", "m25")) for (k in 3:5) {
  dd <- messy[messy$cohort == co, ]
  f <- cph(Surv(time, event) ~ rcs(x, k), data = dd, eps = 1e-12, tol = 1e-14, iter.max = 100)
  a <- anova(f)
  mr[[length(mr) + 1]] <- data.frame(cohort = co, k = k, term = seq_along(coef(f)),
    knots = paste(num(f$Design$parms$x), collapse = ";"), coef = unname(coef(f)), se = unname(sqrt(diag(vcov(f)))),
    overall_chisq = a[1, 1], overall_df = a[1, 2], nonlin_chisq = a[2, 1], nonlin_df = a[2, 2], nonlin_p = a[2, 3])
}
write_ref(do.call(rbind, mr), "rcs_messy_reference.csv")
vi <- list(); vs <- list()
for (co in c("m40", "m25", "m15")) for (s in 1:3) {
  dd <- messy[messy$cohort == co, ]
  f <- cph(Surv(time, event) ~ x + z, data = dd, x = TRUE, y = TRUE, surv = TRUE)
  set.seed(s); S <- replicate(50, sample(nrow(dd), replace = TRUE))   # the samples validate draws
  set.seed(s); v <- suppressWarnings(validate(f, B = 50))
  vi[[length(vi) + 1]] <- data.frame(cohort = co, seed = s, dxy_orig = v["Dxy", "index.orig"],
    dxy_optimism = v["Dxy", "optimism"], slope_optimism = v["Slope", "optimism"], B = v["Dxy", "n"])
  vs[[length(vs) + 1]] <- data.frame(cohort = co, seed = s, sample = 1:50, rows = apply(S, 2, paste, collapse = " "))
}
write_ref(do.call(rbind, vi), "validate_resampled_reference.csv")
write.csv(do.call(rbind, vs), "validate_resamples.csv", row.names = FALSE)

# ---- rcs(x, k) with a covariate and missing values: rms evaluates rcs(x, k), its knots, on every non-missing
# x of the data (model.frame), before cph drops the incomplete rows (missing time or covariate)
rc <- list()
for (co in c("m40", "m25")) for (k in 3:5) {
  dd <- messy[messy$cohort == co, ]
  na_z <- seq(3, nrow(dd), by = 6); na_time <- c(2, 7)
  dd$z[na_z] <- NA; dd$time[na_time] <- NA
  f <- cph(Surv(time, event) ~ rcs(x, k) + z, data = dd, eps = 1e-12, tol = 1e-14, iter.max = 100)
  a <- anova(f)
  rc[[length(rc) + 1]] <- data.frame(cohort = co, k = k, na_z = paste(na_z, collapse = " "),
    na_time = paste(na_time, collapse = " "), n = f$stats[["Obs"]], term = seq_along(coef(f)),
    knots = paste(num(f$Design$parms$x), collapse = ";"), coef = unname(coef(f)), se = unname(sqrt(diag(vcov(f)))),
    overall_chisq = a["x", 1], overall_df = a["x", 2], nonlin_chisq = a[" Nonlinear", 1], nonlin_df = a[" Nonlinear", 2])
}
write_ref(do.call(rbind, rc), "rcs_covariate_reference.csv")

# ---- survdiff where the log-rank statistic has no variance: R stops with an error when everyone at risk has the
# event, and otherwise reports chisq 0 with df and p as print.survdiff computes them (df = groups with expected > 0,
# less 1); an all-tied time with censorings has variance
nv <- list(no_events = data.frame(time = c(5, 2, 0, 3), event = c(0, 0, 0, 0), group = c(1, 2, 1, 2)),
           one_group_with_events = data.frame(time = c(4, 1, 3, 2, 2, 5), event = c(1, 0, 1, 0, 0, 1),
                                              group = c(0, 1, 0, 1, 1, 0)),
           all_die_at_once = data.frame(time = rep(5, 8), event = rep(1, 8), group = rep(c(0, 1), 4)),
           all_tied = data.frame(time = rep(1, 6), event = c(1, 1, 1, 0, 0, 1), group = c(0, 1, 0, 1, 1, 0)))
nvr <- list()
for (nm in names(nv)) {
  s <- tryCatch(survdiff(Surv(time, event) ~ group, data = nv[[nm]]), error = function(e) NULL)
  df <- if (is.null(s)) NA else sum(s$exp > 0) - 1
  nvr[[length(nvr) + 1]] <- data.frame(case = nm, time = paste(nv[[nm]]$time, collapse = " "),
    event = paste(nv[[nm]]$event, collapse = " "), group = paste(nv[[nm]]$group, collapse = " "),
    r_error = is.null(s), chisq = if (is.null(s)) NA else s$chisq, df = df,
    p = if (is.null(s)) NA else suppressWarnings(pchisq(s$chisq, df, lower.tail = FALSE)))
}
write_ref(do.call(rbind, nvr), "logrank_no_variance_reference.csv")

# ---- Cox models without a finite maximum or without information: what coxph says. Monotone likelihood (at every
# event time the patients with the event have the highest, or lowest, x among those at risk): coxph warns 'Loglik
# converged before variable k; coefficient may be infinite' or 'Ran out of iterations and did not converge' and gives a
# large coefficient with a huge standard error. x varying only among patients censored before the first event (no
# information) or constant: coefficient NA.
deg <- list(
  monotone_high = data.frame(time = c(2, 3, 4, 5, 6, 7, 8, 9, 10, 11), event = c(1, 0, 1, 1, 0, 1, 0, 0, 1, 0),
                             x = c(1, 0, 1, 1, 0, 1, 0, 0, 1, 0), z = c(3, 1, 4, 1, 5, 9, 2, 6, 5, 3)),
  monotone_low = data.frame(time = c(2, 3, 4, 5, 6, 7, 8, 9, 10, 11), event = c(1, 0, 1, 1, 0, 1, 0, 0, 1, 0),
                            x = c(0, 1, 0, 0, 1, 0, 1, 1, 0, 1), z = c(3, 1, 4, 1, 5, 9, 2, 6, 5, 3)),
  monotone_continuous = data.frame(time = c(1, 2, 3, 4, 5, 6, 7, 8), event = c(1, 0, 1, 1, 0, 1, 0, 0),
                                   x = c(9.5, 2.2, 8.1, 7.7, 1.3, 5.0, 4.4, 3.9), z = c(3, 1, 4, 1, 5, 9, 2, 6)),
  no_information = data.frame(time = c(0.5, 0.7, 0.9, 2, 3, 4, 5, 6, 7, 8), event = c(0, 0, 0, 1, 0, 1, 1, 0, 1, 0),
                              x = c(1, 2, 3, 0, 0, 0, 0, 0, 0, 0), z = c(3, 1, 4, 1, 5, 9, 2, 6, 5, 3)),
  constant = data.frame(time = c(2, 3, 4, 5, 6, 7, 8, 9), event = c(1, 0, 1, 1, 0, 1, 0, 1), x = rep(4, 8),
                        z = c(3, 1, 4, 1, 5, 9, 2, 6)),
  ordinary = data.frame(time = c(2, 3, 4, 5, 6, 7, 8, 9, 10, 11), event = c(1, 0, 1, 1, 0, 1, 0, 1, 1, 0),
                        x = c(1, 0, 0, 1, 0, 1, 1, 0, 0, 1), z = c(3, 1, 4, 1, 5, 9, 2, 6, 5, 3)))
dr <- list()
for (nm in names(deg)) for (model in c("x", "x + z")) {
  said <- character(0)
  fit <- withCallingHandlers(coxph(as.formula(paste("Surv(time, event) ~", model)), data = deg[[nm]], ties = "efron"),
                             warning = function(w) { said <<- c(said, trimws(conditionMessage(w))); invokeRestart("muffleWarning") })
  dr[[length(dr) + 1]] <- data.frame(case = nm, model = model, time = paste(deg[[nm]]$time, collapse = " "),
    event = paste(deg[[nm]]$event, collapse = " "), x = paste(deg[[nm]]$x, collapse = " "),
    z = paste(deg[[nm]]$z, collapse = " "), coef_x = unname(coef(fit)["x"]),
    se_x = if (is.na(coef(fit)["x"])) NA else unname(sqrt(diag(vcov(fit)))[1]), r_warning = paste(said, collapse = " | "))
}
write_ref(do.call(rbind, dr), "cox_degenerate_reference.csv")

# ---- response as a time-dependent covariate with a monotone likelihood (every event in a responder after the
# response): coxph on tmerge data gives a huge coefficient and standard error with a warning
tvd <- data.frame(id = 1:10, time = c(2, 3, 4, 5, 6, 7, 8, 9, 10, 11), event = c(1, 0, 1, 1, 0, 1, 0, 0, 1, 0))
tvd$resp_time <- ifelse(tvd$event == 1, tvd$time / 2, NA)
tvd2 <- tmerge(tvd[, c("id", "time", "event")], tvd, id = id, ev = event(time, event), resp = tdc(resp_time))
said <- character(0)
tvfit <- withCallingHandlers(coxph(Surv(tstart, tstop, ev) ~ resp, data = tvd2, ties = "efron"),
                             warning = function(w) { said <<- c(said, trimws(conditionMessage(w))); invokeRestart("muffleWarning") })
write_ref(data.frame(time = paste(tvd$time, collapse = " "), event = paste(tvd$event, collapse = " "),
                     resp_time = paste(tvd$resp_time, collapse = " "), coef = unname(coef(tvfit)),
                     se = unname(sqrt(diag(vcov(tvfit)))), r_warning = paste(said, collapse = " | ")),
          "timevarying_degenerate_reference.csv")


# ---- Multivariable Cox models where one column has a monotone likelihood (at every event time the patients with the
# event have the highest, or lowest, x among those at risk), or where only a combination of columns has one. coxph
# gives the column a huge coefficient and standard error with a warning, and finite estimates for the other columns:
# those are, to within exp(-|coef|), the estimates of the limit model (coefficient at +-infinity), the Cox model of
# the other columns in which each event's risk set keeps only the patients with the event's (the extreme) x: delayed
# entry after the last event time at which the extreme x at risk was another value (fit as Surv(entry, time, event)).
# Rows: one per data set x model x term, from the full fit ('coxph') and from the limit model ('limit').
limit_entry <- function(time, event, x, up) {
  et <- sort(unique(time[event == 1]))
  ext <- sapply(et, function(tk) if (up) max(x[time >= tk]) else min(x[time >= tk]))
  sapply(seq_along(x), function(i) { before <- et[ext != x[i] & et <= time[i]]; if (length(before)) max(before) else 0 })
}
mono <- list(
  binary_high = list(data = data.frame(
    time = c(6.7, 6.4, 8.5, 1, 6.4, 8.3, 4.5, 3.4, 5.6, 6.7, 5.9, 12.4, 16.8, 17.2, 12.6, 14.1, 12.1, 9.7, 19.4, 9.5,
             13.7, 16.4, 10.5, 11.4, 8.8, 9.4, 8.4, 10.2, 21.7, 6),
    event = c(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0),
    x = c(rep(1, 10), rep(0, 20)),
    z = c(64, 33, 58, 39, 51, 55, 44, 56, 41, 50, 64, 45, 57, 40, 58, 37, 45, 38, 57, 45, 49, 57, 64, 61, 53, 69, 64,
          53, 74, 45),
    w = c(1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 1, 1)),
    model = "x + z + w", up = TRUE),
  monotone_high = list(data = deg$monotone_high, model = "x + z", up = TRUE),
  monotone_low = list(data = deg$monotone_low, model = "x + z", up = FALSE),
  monotone_continuous = list(data = deg$monotone_continuous, model = "x + z", up = TRUE),
  combination = list(data = data.frame(time = 1:12, event = c(1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 0),
                                       x1 = c(9, 3, 4, 9, 9, 4, 1, 6, 3, 7, 0, 4),
                                       x2 = c(3, 8, 6, 0, -1, 3, 5, -1, 1, -4, 2, -3)),
                     model = "x1 + x2", up = NA))
mr <- list()
for (nm in names(mono)) {
  d <- mono[[nm]]$data
  said <- character(0)
  fit <- withCallingHandlers(coxph(as.formula(paste("Surv(time, event) ~", mono[[nm]]$model)), data = d, ties = "efron"),
                             warning = function(w) { said <<- c(said, trimws(conditionMessage(w))); invokeRestart("muffleWarning") })
  cols <- paste(sapply(names(d), function(v) paste(d[[v]], collapse = " ")), collapse = "; ")
  mr[[length(mr) + 1]] <- data.frame(case = nm, fit = "coxph", model = mono[[nm]]$model, data = cols,
    columns = paste(names(d), collapse = " "), term = names(coef(fit)), coef = unname(coef(fit)),
    se = unname(sqrt(diag(vcov(fit)))), loglik = fit$loglik[2], concordance = unname(fit$concordance["concordance"]),
    r_warning = paste(said, collapse = " | "))
  if (!is.na(mono[[nm]]$up)) {
    d$entry <- limit_entry(d$time, d$event, d$x, mono[[nm]]$up)
    rest <- setdiff(strsplit(mono[[nm]]$model, " + ", fixed = TRUE)[[1]], "x")
    said <- character(0)
    lim <- withCallingHandlers(coxph(as.formula(paste("Surv(entry, time, event) ~", paste(rest, collapse = " + "))),
                                     data = d, ties = "efron"),
                               warning = function(w) { said <<- c(said, trimws(conditionMessage(w))); invokeRestart("muffleWarning") })
    mr[[length(mr) + 1]] <- data.frame(case = nm, fit = "limit", model = mono[[nm]]$model, data = cols,
      columns = paste(setdiff(names(d), "entry"), collapse = " "), term = names(coef(lim)), coef = unname(coef(lim)),
      se = unname(sqrt(diag(vcov(lim)))), loglik = lim$loglik[2], concordance = NA, r_warning = paste(said, collapse = " | "))
  }
}
write_ref(do.call(rbind, mr), "cox_monotone_covariates_reference.csv")

# ---- a restricted cubic spline with a monotone likelihood. 'monotone': every event has the highest x at risk (x falls
# with time): coxph(Surv ~ rcs(x, 4)) and cph run off (huge coefficients and standard errors, 'Ran out of iterations'),
# as the linear model does; with a covariate z, z's standard error is huge too (x has no ties: at the limit each event's
# risk set keeps the event alone). 'ushape': the events alternately the highest and the lowest x at risk: the linear
# model is finite (coef ~0), the spline runs off (a curve high at both ends orders every event first; 'coefficients
# may be infinite'). Rows: one per case x fit x term, with the knots rcspline.eval places
rm_cases <- list(
  monotone = data.frame(time = 1:20, event = rep(c(1, 1, 0, 1), 5),
                        x = c(58.1, 55.7, 54.2, 52.9, 49.8, 48.3, 46.6, 44.1, 42.5, 40.2, 38.8, 36.4, 34.9, 32.3, 30.7,
                              28.2, 26.9, 24.4, 22.8, 20.1),
                        z = c(64, 33, 58, 39, 51, 55, 44, 56, 41, 50, 64, 45, 57, 40, 58, 37, 45, 38, 57, 45)),
  ushape = data.frame(time = 1:20, event = rep(c(1, 1, 0, 1), 5),
                      x = c(99, 1, 94, 6, 89, 11, 84, 16, 79, 21, 74, 26, 69, 31, 64, 36, 59, 41, 54, 46),
                      z = c(64, 33, 58, 39, 51, 55, 44, 56, 41, 50, 64, 45, 57, 40, 58, 37, 45, 38, 57, 45)))
rm_fits <- list(coxph_rcs = function(d) coxph(Surv(time, event) ~ rcs(x, 4), data = d, ties = "efron"),
                cph_rcs = function(d) cph(Surv(time, event) ~ rcs(x, 4), data = d),
                coxph_rcs_z = function(d) coxph(Surv(time, event) ~ rcs(x, 4) + z, data = d, ties = "efron"),
                coxph_linear = function(d) coxph(Surv(time, event) ~ x, data = d, ties = "efron"))
rmr <- list()
for (cs in names(rm_cases)) for (nm in names(rm_fits)) {
  rm_d <- rm_cases[[cs]]
  said <- character(0)
  fit <- withCallingHandlers(rm_fits[[nm]](rm_d),
                             warning = function(w) { said <<- c(said, trimws(conditionMessage(w))); invokeRestart("muffleWarning") })
  rmr[[length(rmr) + 1]] <- data.frame(case = cs, fit = nm, time = paste(rm_d$time, collapse = " "),
    event = paste(rm_d$event, collapse = " "), x = paste(rm_d$x, collapse = " "), z = paste(rm_d$z, collapse = " "),
    knots = paste(num(rcspline.eval(rm_d$x, nk = 4, knots.only = TRUE)), collapse = " "), term = names(coef(fit)),
    coef = unname(coef(fit)), se = unname(sqrt(diag(vcov(fit)))), r_warning = paste(said, collapse = " | "))
}
write_ref(do.call(rbind, rmr), "rcs_monotone_reference.csv")

# ---- time-dependent AUC (cumulative/dynamic, IPCW): riskRegression::Score(metrics = "auc", cens.model = "km"),
# the Blanche-Gerds implementation (timeROC's successor; timeROC 0.4 uses the same weights, pec::ipcw marginal with
# subjectTimesLag = 1): cases T <= t with the event, weighted 1 / G(T-), G the Kaplan-Meier of the censoring times
# (events before censorings at a tie), controls T > t. Score takes risks in [0, 1]: the marker rescaled (order and
# ties kept). Data: lung, veteran, the TIL cohort at 6 and 12 months, random whole-number times (events and
# censorings tied at t and before it), the messy cohorts.
ta <- list()
add_tdauc <- function(dataset, marker, time, event, x, times) {
  d <- data.frame(time = time, event = event)
  risk <- (x - min(x)) / (max(x) - min(x))
  sc <- riskRegression::Score(list(m = risk), formula = Surv(time, event) ~ 1, data = d, times = times, metrics = "auc",
              cens.model = "km", null.model = FALSE, conf.int = FALSE)$AUC$score
  ta[[length(ta) + 1]] <<- data.frame(dataset = dataset, marker = marker, time = sc$times, auc = sc$AUC,
    cases = sapply(sc$times, function(u) sum(time <= u & event == 1)),
    cases_at_t = sapply(sc$times, function(u) sum(time == u & event == 1)),
    controls = sapply(sc$times, function(u) sum(time > u)))
}
lung3 <- na.omit(lung2)
for (m in c("age", "ph_ecog", "sex")) add_tdauc("lung", m, lung3$time, lung3$event, lung3[[m]], c(180, 365, 500))
add_tdauc("veteran", "karno", vet2$time, vet2$event, -vet2$karno, c(30, 90, 180))
add_tdauc("veteran", "age", vet2$time, vet2$event, vet2$age, c(30, 90, 180))
for (ep in c("pfs", "os")) for (m in c(markers, "ecog"))
  add_tdauc(paste0("til_", ep), m, til[[paste0(ep, "_months")]], til[[paste0(ep, "_event")]], til[[m]], c(6, 12))
for (nm in unique(rand$dataset)) {
  d <- rand[rand$dataset == nm, ]
  u <- median(d$time)
  if (nrow(d) >= 20 && sum(d$event) >= 5 && any(d$time > u) && any(d$time <= u & d$event == 1))
    add_tdauc(nm, "x", d$time, d$event, d$x, u)
}
for (nm in unique(messy$cohort)) {
  d <- messy[messy$cohort == nm, ]
  add_tdauc(nm, "x", d$time, d$event, d$x, c(6, 12))
}
write_ref(do.call(rbind, ta), "tdauc_reference.csv")
# standard errors of the AUC and of the difference of two markers' AUCs (Score's iid representation, conf.int =
# TRUE, as timeROC's): tilpheno's CIs are bootstrap ones (percentile, and a paired bootstrap SD for the difference),
# so the test asks for agreement within Monte Carlo and asymptotic error, not equality
ts <- list()
add_tdauc_se <- function(dataset, marker_a, marker_b, time, event, a, b, times) {
  d <- data.frame(time = time, event = event)
  r <- function(v) (v - min(v)) / (max(v) - min(v))
  sc <- riskRegression::Score(list(a = r(a), b = r(b)), formula = Surv(time, event) ~ 1, data = d, times = times,
                              metrics = "auc", cens.model = "km", null.model = FALSE, conf.int = TRUE)$AUC
  s <- sc$score; cc <- sc$contrasts
  ts[[length(ts) + 1]] <<- data.frame(dataset = dataset, marker_a = marker_a, marker_b = marker_b, time = times,
    auc_a = s$AUC[s$model == "a"], se_a = s$se[s$model == "a"], auc_b = s$AUC[s$model == "b"],
    se_b = s$se[s$model == "b"], difference = -cc$delta.AUC, se_difference = cc$se, p_difference = cc$p)
}
add_tdauc_se("lung", "ph_ecog", "age", lung3$time, lung3$event, lung3$ph_ecog, lung3$age, c(180, 365))
add_tdauc_se("veteran", "karno", "age", vet2$time, vet2$event, -vet2$karno, vet2$age, c(30, 90))
for (ep in c("pfs", "os"))
  add_tdauc_se(paste0("til_", ep), "cd8pd1_pct_of_cd8", "til_dose_cells", til[[paste0(ep, "_months")]],
               til[[paste0(ep, "_event")]], til$cd8pd1_pct_of_cd8, til$til_dose_cells, c(6, 12))
write_ref(do.call(rbind, ts), "tdauc_se_reference.csv")

# ---- apparent calibration at a time u, as rms::calibrate(cph(..., surv = TRUE, time.inc = u), cmethod = "KM", u, m):
# S(u | x) = S0(u)^exp(lp) (cph's surv.summary); g = floor(n / m) groups (m = n %/% 4: 4 groups) at the cuts
# unique(quantile(c(0, 1, S(u | x)), seq(0, 1, length = g + 1))), cut2 intervals [cut_i, cut_i+1) (the last closed);
# per group (rms::groupkm, which calibrate calls) the mean predicted S(u), n, events and the Kaplan-Meier S(u); cph
# converged to eps 1e-12, not its default 1e-4.
# calibrate's own mean.predicted and KM columns (its apparent ones, B = 2) are checked equal to groupkm's here.
cal <- list()
add_calibration <- function(dataset, d, form, u) {
  f <- cph(form, data = d, x = TRUE, y = TRUE, surv = TRUE, time.inc = u, eps = 1e-12, tol = 1e-13)
  m <- nrow(d) %/% 4
  set.seed(1)
  out <- capture.output(k <- suppressWarnings(calibrate(f, cmethod = "KM", u = u, m = m, B = 2)))
  surv <- as.vector(f$surv.summary[2, , 1]^exp(f$linear.predictors))
  cuts <- unique(quantile(c(0, 1, surv), seq(0, 1, length = floor(nrow(d) / m) + 1), na.rm = TRUE))
  gk <- groupkm(surv, f$y, u = u, cuts = cuts)
  stopifnot(isTRUE(all.equal(unname(gk[, "x"]), unname(k[, "mean.predicted"]), tolerance = 1e-12)),
            isTRUE(all.equal(unname(gk[, "KM"]), unname(k[, "KM"]), tolerance = 1e-12)))
  cal[[length(cal) + 1]] <<- data.frame(dataset = dataset, model = deparse(form[[3]]), time = u,
    group = seq_len(nrow(gk)), n = gk[, "n"], events = gk[, "events"], predicted = gk[, "x"], observed = gk[, "KM"])
}
tc <- til[, c("pfs_months", "pfs_event", "os_months", "os_event", "cd8_pct_of_cd3", "age", "til_dose_cells")]
add_calibration("til_pfs", tc, Surv(pfs_months, pfs_event) ~ cd8_pct_of_cd3 + age, 12)
add_calibration("til_os", tc, Surv(os_months, os_event) ~ til_dose_cells, 12)
lc <- na.omit(lung2[, c("time", "event", "age", "sex", "ph_ecog")])
add_calibration("lung", lc, Surv(time, event) ~ age + sex + ph_ecog, 365)
write_ref(do.call(rbind, cal), "calibration_reference.csv")

writeLines(c(R.version.string, paste("survival", packageVersion("survival")),
             paste("maxstat", packageVersion("maxstat")), paste("rms", packageVersion("rms")),
             paste("riskRegression", packageVersion("riskRegression")),
             paste("prodlim", packageVersion("prodlim"))), "R_versions.txt")
