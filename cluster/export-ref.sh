#!/bin/sh
# Export one git ref of this repository (committed files only: no runs/, .venv/, secrets) to the folder
# cluster/aws.yaml mounts on every node, with the commit it came from in REVISION.
#   cluster/export-ref.sh [REF] [DEST]      (defaults: HEAD, ~/.raypipe/aws/src)
set -eu

ref=${1:-HEAD}
dest=${2:-"$HOME/.raypipe/aws/src"}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse --verify "$ref^{commit}")

rm -rf "$dest"
mkdir -p "$dest"
git -C "$repo" archive --format=tar "$commit" | tar -x -C "$dest"
echo "$commit" > "$dest/REVISION"
echo "export-ref: $ref ($commit) -> $dest"
