#!/usr/bin/env bash
# Install the official Azure IoT SDKs (Python in a venv under target/, Node under
# tests/sdk/node; both cached between runs) and run the interop tests against muster.
# They are #[ignore]d in a plain `cargo test`, because they need the SDKs and root (they bind
# ports 443 and 8883 on loopback addresses).
#
#   bash tests/sdk/run.sh            # both SDKs
#   bash tests/sdk/run.sh --locked   # extra cargo flags go to `cargo test`
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."

MUSTER_SDK_PYTHON="$(bash tests/sdk/setup.sh | tail -n 1)"
MUSTER_SDK_NODE="$(bash tests/sdk/node/setup.sh | tail -n 1)"
export MUSTER_SDK_PYTHON MUSTER_SDK_NODE
echo "MUSTER_SDK_PYTHON=$MUSTER_SDK_PYTHON"
echo "MUSTER_SDK_NODE=$MUSTER_SDK_NODE"
cargo test "$@" -p muster-server --test sdk_python --test sdk_node --test sdk_node_transports --test sdk_eventhubs -- --ignored
