#!/usr/bin/env bash
# Generates the ABCI protobuf classes (placeholder until the CometBFT engine lands).
set -euo pipefail
exit 0
