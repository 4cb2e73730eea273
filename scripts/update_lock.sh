#!/usr/bin/env bash
# Rewrite requirements.lock from a fresh venv holding the newest releases pip finds (torch pinned as in the
# lock, or TORCH=torch==X), then run the tests with it. Commit the lock only if the tests pass.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 -m venv "$dir/venv"
"$dir/venv/bin/python" -m pip install -q --upgrade pip
"$dir/venv/bin/pip" install -q "${TORCH:-$(grep -m1 '^torch==' requirements.lock)}"
"$dir/venv/bin/pip" install -q -e ".[dev]" "$@"
{
  sed -n '1,2p' requirements.lock
  "$dir/venv/bin/pip" freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > requirements.lock.new
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$dir/venv/bin/python" -m pytest -q -p no:cacheprovider
mv requirements.lock.new requirements.lock
echo "requirements.lock updated; review 'git diff requirements.lock' and commit it"
