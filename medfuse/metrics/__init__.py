"""Objective fusion metrics (EN, MI, VIFF, QMI, QG, QY, QC, QP)."""
