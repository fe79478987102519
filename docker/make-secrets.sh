#!/bin/sh
# Write the random secrets docker/compose.yaml reads, only those missing: mode 600 in a mode 700
# folder that git and the Docker build context ignore. Existing files are kept (the PostgreSQL and
# MinIO volumes were initialised with them).
#   docker/make-secrets.sh [DIR] [OWNER_UID]   (OWNER_UID: chown the files when run as root)
set -eu

dir=${1:-"$(dirname "$0")/secrets"}
owner=${2:-}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

# NAME BYTES: hex, so no value needs quoting or URL escaping.
for spec in ray_token:32 postgres_password:32 minio_root_user:10 minio_root_password:32 \
            mlflow_s3_access_key:10 mlflow_s3_secret_key:32; do
  name=${spec%%:*}
  bytes=${spec##*:}
  file="$dir/$name"
  if [ ! -s "$file" ]; then
    od -An -tx1 -N"$bytes" /dev/urandom | tr -d ' \n' > "$file.tmp"
    mv "$file.tmp" "$file"
    echo "make-secrets: wrote $file"
  fi
  chmod 600 "$file"
  if [ -n "$owner" ] && [ "$(id -u)" = 0 ]; then chown "$owner" "$file"; fi
done
if [ -n "$owner" ] && [ "$(id -u)" = 0 ]; then chown "$owner" "$dir"; fi
