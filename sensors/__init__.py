"""Dagster sensors: the landing-folder file drop (more arrive with the monitoring work)."""
