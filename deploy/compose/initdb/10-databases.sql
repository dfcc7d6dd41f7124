-- Run once by the TimescaleDB image on an empty data volume (docker-entrypoint-initdb.d):
-- the Dagster instance and MLflow each get a database of their own, apart from market data
-- (DESIGN §3). The market-data database (POSTGRES_DB=smc) is migrated by `smc db migrate`.
CREATE DATABASE dagster;
CREATE DATABASE mlflow;
