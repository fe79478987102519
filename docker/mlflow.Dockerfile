# MLflow tracking server for docker/compose.yaml: PostgreSQL backend, artifacts in MinIO (S3 API),
# served through the server (--serve-artifacts), so Ray nodes need no S3 credentials.
# Build from the repository root: docker build -f docker/mlflow.Dockerfile -t raypipe-mlflow:3.17.2 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# MLflow equal to pyproject.toml (tests/deploy checks it): server and clients speak the same version.
ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13
ARG BOTO3_VERSION=1.44.5
# Same uid as the raypipe image: the Compose secret files are owned by the host user (mode 600).
ARG RAYPIPE_UID=1000
ARG RAYPIPE_GID=1000

RUN pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" \
      "boto3==${BOTO3_VERSION}" \
 && pip check \
 && test "$RAYPIPE_UID" -ne 0 \
 && groupadd --non-unique --gid "$RAYPIPE_GID" mlflow \
 && useradd --non-unique --uid "$RAYPIPE_UID" --gid "$RAYPIPE_GID" --create-home mlflow

COPY --chmod=0755 docker/mlflow-server.sh /usr/local/bin/mlflow-server

ENV PYTHONUNBUFFERED=1
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow-server"]
