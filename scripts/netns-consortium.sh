#!/usr/bin/env bash
# Four hospitals on four "hosts" (Linux network namespaces ml-h1..ml-h4 on the bridge ml-br0,
# 10.231.0.11-14), each running its node and CometBFT; `down` removes every namespace, the
# bridge and their processes. Needs root and `ip` (iproute2). See tests/netns/harness.py.
#   sudo scripts/netns-consortium.sh up [DIR]     (default /tmp/medledger-netns)
#   sudo scripts/netns-consortium.sh down
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PATH"
exec .venv/bin/python -m tests.netns.harness "$@"
