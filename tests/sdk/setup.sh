#!/usr/bin/env bash
# Create (or reuse) a Python venv with the official Azure IoT SDKs pinned in
# requirements.txt. Idempotent: does nothing when the venv already matches the
# current requirements.txt (sha256 marker). Prints the venv's python path on
# the last line of stdout.
#
#   MUSTER_SDK_VENV   venv location (default: /work/main/target/sdk-venv)
#   PYTHON            interpreter used to create the venv (default: python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
venv="${MUSTER_SDK_VENV:-$repo_root/target/sdk-venv}"
python="${PYTHON:-python3}"
req="$here/requirements.txt"
marker="$venv/.muster-requirements.sha256"

want="$(sha256sum "$req" | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
    echo "$venv/bin/python"
    exit 0
fi

# Make sure the venv + ensurepip modules exist (Debian/Ubuntu split them out).
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "setup.sh: python venv/ensurepip missing; installing python3-venv" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q python3-venv >&2 \
            || { apt-get update -q >&2 && apt-get install -y -q python3-venv >&2; }
    else
        echo "setup.sh: $python lacks the venv/ensurepip modules and apt-get is unavailable" >&2
        exit 1
    fi
fi

# A half-built venv (no python or no pip) is recreated from scratch.
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv" >&2
fi

rm -f "$marker"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
# Sanity check: the SDK imports.
"$venv/bin/python" -c 'import azure.iot.device, azure.iot.hub, azure.eventhub' >&2
echo "$want" > "$marker"

echo "$venv/bin/python"
