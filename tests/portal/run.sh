#!/usr/bin/env bash
# The portal's browser test: install playwright-core (cached), then run the lab in Debian's
# headless Chromium against a real `muster serve`. Screenshots land in docs/portal/.
#
#   bash tests/portal/run.sh            # extra arguments go to `cargo test`
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."
MUSTER_PORTAL_HARNESS="$(bash tests/portal/setup.sh | tail -n 1)"
export MUSTER_PORTAL_HARNESS
cargo test "$@" -p muster --test portal_browser -- --ignored --nocapture
