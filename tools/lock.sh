#!/usr/bin/env bash
# Regenerates requirements_lock.txt from requirements.in: exact versions and
# sha256 hashes for CPython 3.11 on manylinux x86_64.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
if ! command -v uv >/dev/null 2>&1; then
  echo "tools/lock.sh: needs uv (pip install uv)" >&2
  exit 1
fi
uv pip compile requirements.in -o requirements_lock.txt \
  --python-version 3.11.7 --python-platform x86_64-manylinux_2_28 \
  --generate-hashes --index-url https://pypi.org/simple --emit-index-url \
  --no-header
echo "Wrote requirements_lock.txt; commit it with requirements.in." >&2
