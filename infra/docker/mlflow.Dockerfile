# MLflow tracking server of infra/docker-compose.yml: MLflow with the PostgreSQL driver and boto3
# (the official image has neither). Same MLflow version as the project (pyproject.toml).
FROM python:3.11-slim
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.13 boto3==1.44.8 \
 && useradd --create-home --uid 1000 mlflow
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
