#!/usr/bin/env bash
# Builds the pinned CometBFT into a project-local folder: go install, never @latest.
set -euo pipefail
version="$1"
tools="$2"
mkdir -p "$tools/bin"
if [ -x "$tools/bin/cometbft" ] && "$tools/bin/cometbft" version 2>/dev/null | grep -q "${version#v}"; then
  exit 0
fi
echo "building CometBFT $version into $tools/bin"
GOBIN="$tools/bin" go install "github.com/cometbft/cometbft/cmd/cometbft@$version"
