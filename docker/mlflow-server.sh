#!/bin/sh
# Start the MLflow tracking server with credentials read from Compose secrets (/run/secrets/*).
# They go into the environment, never onto the command line (visible in `ps`) or into compose.yaml.
set -eu

secret() {
  [ -s "/run/secrets/$1" ] || { echo "mlflow-server: missing secret /run/secrets/$1 (make cluster-up writes it)" >&2; exit 1; }
  tr -d '\r\n' < "/run/secrets/$1"
}

AWS_ACCESS_KEY_ID=$(secret mlflow_s3_access_key)
AWS_SECRET_ACCESS_KEY=$(secret mlflow_s3_secret_key)
# Hex passwords (make-secrets.sh) need no URL escaping.
MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${POSTGRES_USER}:$(secret postgres_password)@${POSTGRES_HOST}:5432/${POSTGRES_DB}"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY MLFLOW_BACKEND_STORE_URI

exec mlflow server --host 0.0.0.0 --port 5000 --serve-artifacts \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-s3://mlflow/artifacts}" "$@"
