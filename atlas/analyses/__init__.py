"""Analyses of stored vectors: PMI, prompt shift, lineage, benchmark prediction, KL validation."""
