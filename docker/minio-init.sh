#!/bin/sh
# One-shot (minio/mc image): create the MLflow artifact bucket and a MinIO user that may touch only
# that bucket, so the MLflow server never holds MinIO's root credentials. Safe to re-run.
set -eu

secret() { tr -d '\r\n' < "/run/secrets/$1"; }

mc alias set raypipe http://minio:9000 "$(secret minio_root_user)" "$(secret minio_root_password)" >/dev/null
mc mb --ignore-existing raypipe/mlflow

cat > /tmp/mlflow-bucket.json <<'POLICY'
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket"], "Resource": ["arn:aws:s3:::mlflow"]},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], "Resource": ["arn:aws:s3:::mlflow/*"]}
  ]
}
POLICY
mc admin policy create raypipe mlflow-bucket /tmp/mlflow-bucket.json
mc admin user add raypipe "$(secret mlflow_s3_access_key)" "$(secret mlflow_s3_secret_key)"
# Attaching an already attached policy is an error in mc; detach first so re-runs succeed.
mc admin policy detach raypipe mlflow-bucket --user "$(secret mlflow_s3_access_key)" >/dev/null 2>&1 || true
mc admin policy attach raypipe mlflow-bucket --user "$(secret mlflow_s3_access_key)"
echo "minio-init: bucket 'mlflow' and its user are ready"
