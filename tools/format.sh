#!/usr/bin/env bash
# Formats and lints the tree with the pinned ruff (pyproject.toml settings).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
ruff="${RUFF:-ruff}"
"${ruff}" format .
"${ruff}" check --fix .
