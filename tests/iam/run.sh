#!/usr/bin/env bash
# Every IAM proof in one command (what `make iam-check` runs): parliament in its own virtualenv and
# @cloud-copilot/iam-simulate from tests/iam/package-lock.json (npm ci), both under .build, then the tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=$PWD/.build
PY=${PYTHON:-python3}
if [ ! -e "$BUILD/parliament/.deps" ] || [ tests/iam/requirements.txt -nt "$BUILD/parliament/.deps" ]; then
  $PY -m venv "$BUILD/parliament"
  "$BUILD/parliament/bin/pip" install -q --upgrade pip
  "$BUILD/parliament/bin/pip" install -q -r tests/iam/requirements.txt
  touch "$BUILD/parliament/.deps"
fi
if [ ! -e "$BUILD/iam-node/.deps" ] || [ tests/iam/package-lock.json -nt "$BUILD/iam-node/.deps" ]; then
  mkdir -p "$BUILD/iam-node"
  cp tests/iam/package.json tests/iam/package-lock.json "$BUILD/iam-node/"
  (cd "$BUILD/iam-node" && npm ci --no-audit --no-fund --ignore-scripts --silent)
  touch "$BUILD/iam-node/.deps"
fi
export ANSIBLE_COLLECTIONS_PATH=${ANSIBLE_COLLECTIONS_PATH:-$PWD/.build/collections}
export AWS_EC2_METADATA_DISABLED=true
STILLPOINT_IAM_REQUIRED=1 exec "${BIN:-$PWD/.venv/bin}/python" -m pytest -q tests/iam "$@"
