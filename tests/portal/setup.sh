#!/usr/bin/env bash
# Install playwright-core (pinned in package-lock.json; it never downloads a browser) into
# ./node_modules and check that Debian's Chromium is there. Idempotent: npm ci runs only when
# package-lock.json changed. Prints this folder's path on the last line of stdout.
#
#   CHROMIUM   the browser (default /usr/bin/chromium, from Debian's chromium package)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
chromium="${CHROMIUM:-/usr/bin/chromium}"
command -v node >/dev/null 2>&1 || { echo "setup.sh: node is not installed" >&2; exit 1; }
[[ -x "$chromium" ]] || { echo "setup.sh: $chromium is missing: apt-get install chromium chromium-driver" >&2; exit 1; }
lock="$here/package-lock.json"
marker="$here/node_modules/.muster-package-lock.sha256"
want="$(sha256sum "$lock" | cut -d' ' -f1)"
if [[ ! -f "$marker" || "$(cat "$marker")" != "$want" ]]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2)
  (cd "$here" && node -e 'require("playwright-core")' >&2)
  echo "$want" > "$marker"
fi
echo "$here"
