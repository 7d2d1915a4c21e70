-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d), as
-- POSTGRES_USER: one database each for the Prefect server and the MLflow tracking server.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
