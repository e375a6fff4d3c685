#!/usr/bin/env bash
# Install the official Azure IoT Node SDKs pinned in package-lock.json into
# ./node_modules (git-ignored) with `npm ci`. Idempotent: does nothing when
# node_modules/.muster-package-lock.sha256 matches package-lock.json.
# Prints this folder's path on the last line of stdout (run the drivers as
# `node <that>/provision.js ...`).
#
#   NPM   npm executable (default: npm)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
npm="${NPM:-npm}"
lock="$here/package-lock.json"
marker="$here/node_modules/.muster-package-lock.sha256"

command -v node >/dev/null 2>&1 || { echo "setup.sh: node is not installed" >&2; exit 1; }
command -v "$npm" >/dev/null 2>&1 || { echo "setup.sh: $npm is not installed" >&2; exit 1; }

want="$(sha256sum "$lock" | cut -d' ' -f1)"

if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
    echo "$here"
    exit 0
fi

# npm ci removes any existing node_modules first, so a half-done install
# (no marker) is redone from scratch.
(cd "$here" && "$npm" ci --no-audit --no-fund --loglevel=error >&2)
# Sanity check: every SDK package loads.
(cd "$here" && node -e '
for (const p of ["azure-iot-provisioning-device", "azure-iot-provisioning-device-mqtt",
                 "azure-iot-provisioning-device-http", "azure-iot-security-x509",
                 "azure-iot-security-symmetric-key", "azure-iot-provisioning-service",
                 "azure-iot-provisioning-device-amqp", "azure-iot-device",
                 "azure-iot-device-mqtt", "azure-iot-device-amqp", "azure-iot-device-http",
                 "azure-iothub", "rhea", "@azure/event-hubs"]) require(p);
' >&2)
echo "$want" > "$marker"

echo "$here"
