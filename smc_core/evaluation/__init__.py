"""Evaluation: time-ordered splits that respect label horizons, classification metrics,
and the simple baselines every model is compared with."""
