"""Snapshot export: JSON, CSV, npz, PNG and the self-contained map page."""
