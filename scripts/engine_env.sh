#!/usr/bin/env bash
# Print the path of engine NAME's virtual environment, building it first when absent.
# Engines pin what they need (vLLM ~3.5 GB, LMCache its own numpy), so each gets its own venv,
# kept outside the checkout and keyed by its exact requirements (scripts/envs/NAME.txt and the
# optional post-install step scripts/envs/NAME.post.sh): a changed pin builds a new one, an
# unchanged one is reused. CACHEGEN_ENVS moves the folder (default ~/.cache/cachegen/envs).
set -euo pipefail
name=$1
here="$(cd "$(dirname "$0")" && pwd)"
req="$here/envs/$name.txt"
post="$here/envs/$name.post.sh"
[ -f "$req" ] || { echo "no requirements for engine $name ($req)" >&2; exit 2; }
key=$( { cat "$req"; [ ! -f "$post" ] || cat "$post"; } | sha256sum | cut -c1-16)
root="${CACHEGEN_ENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/cachegen/envs}"
env="$root/$name-$key"
if [ ! -f "$env/.complete" ]; then
  echo "building the $name environment in $env (minutes, once)" >&2
  rm -rf "$env"
  python3 -m venv "$env"
  # pip's notes about unused local index folders are noise; its errors still reach stderr.
  "$env/bin/python" -m pip install -q --disable-pip-version-check -r "$req" \
    2> >(grep -v "^WARNING: Location" >&2) >&2
  if [ -f "$post" ]; then (source "$env/bin/activate" && source "$post") >&2; fi
  touch "$env/.complete"
fi
echo "$env"
