"""Biomarker analysis: cohort join, endpoints, Kaplan-Meier, cut-points, Cox models, report."""
