"""Simulated TIL infusion products (FCS files with ground truth) and clinical outcomes."""
