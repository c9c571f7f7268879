"""Per-product HTML reports, cohort index page, plots."""
