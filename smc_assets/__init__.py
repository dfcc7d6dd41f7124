"""Dagster assets, asset checks, resources and partitions: one module per lineage stage."""
