"""Framework-free domain code for the SMC MLOps pipeline.

Nothing in this package imports Dagster or BentoML: the orchestration layer
(`smc_assets`, `smc_jobs`, `sensors`) and the service (`bento`) build on it.
"""
