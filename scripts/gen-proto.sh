#!/usr/bin/env bash
# Generates the Python protobuf classes for ABCI 2.0 from the .proto files of the pinned
# CometBFT module (and the gogoproto module it requires), into src/medledger/consensus/proto/.
#
# Usage: scripts/gen-proto.sh VERSION PYTHON      e.g. scripts/gen-proto.sh v0.38.25 .venv/bin/python
#
# Why this shape:
# - the schema comes from the exact module version we run, so field numbers cannot drift;
# - the module is located with `go mod download -json` (works on a fresh machine, fills the
#   module cache when needed), the gogoproto version is read from CometBFT's own go.mod;
# - the .proto files are staged under medledger/consensus/proto/ with their imports rewritten,
#   so the generated modules import each other as `medledger.consensus.proto.tendermint...`:
#   no sys.path tricks, no top-level `tendermint` package leaking into site-packages;
# - protoc is grpcio-tools' bundled one, whose gencode matches the pinned protobuf runtime;
# - a stamp (versions + this script's hash + protoc version) makes a second run a no-op.
set -euo pipefail

version="${1:?usage: gen-proto.sh VERSION PYTHON}"
python="${2:?usage: gen-proto.sh VERSION PYTHON}"

root="$(cd "$(dirname "$0")/.." && pwd)"
case "$python" in /*) ;; *) python="$root/$python" ;; esac
out="$root/src/medledger/consensus/proto"
prefix="medledger/consensus/proto"

protoc_version="$("$python" -m grpc_tools.protoc --version)"
script_hash="$(sha256sum "$0" | cut -c1-16)"
stamp_text="cometbft=$version script=$script_hash protoc=$protoc_version"
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp_text" ] \
  && [ -f "$out/tendermint/abci/types_pb2.py" ]; then
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# `go mod download` outside any module/workspace: the answer does not depend on the cwd.
go_json() {
  (cd "$tmp" && GOWORK=off GO111MODULE=on GOFLAGS=-mod=mod go mod download -json "$1")
}
json_field() {
  "$python" -c 'import json, sys; d = json.load(sys.stdin); e = d.get("Error")
if e: sys.exit("go mod download: " + e)
print(d[sys.argv[1]])' "$1"
}

cmt_json="$(go_json "github.com/cometbft/cometbft@$version")"
cmt_dir="$(printf '%s' "$cmt_json" | json_field Dir)"
cmt_gomod="$(printf '%s' "$cmt_json" | json_field GoMod)"
gogo_version="$(awk '$1 == "github.com/cosmos/gogoproto" { print $2; exit }' "$cmt_gomod")"
if [ -z "$gogo_version" ]; then
  echo "gen-proto: github.com/cosmos/gogoproto not found in $cmt_gomod" >&2
  exit 1
fi
gogo_dir="$(go_json "github.com/cosmos/gogoproto@$gogo_version" | json_field Dir)"

grpc_include="$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"

# Stage the closure of tendermint/abci/types.proto's imports, with rewritten import paths.
stage="$tmp/stage"
stage_file() {  # $1 = import path as written in CometBFT's files
  local rel="$1" src
  case "$rel" in
    gogoproto/*) src="$gogo_dir/$rel" ;;
    tendermint/*) src="$cmt_dir/proto/$rel" ;;
    *) return 0 ;;  # google/protobuf/*: shipped with protoc and the protobuf runtime
  esac
  local dst="$stage/$prefix/$rel"
  [ -f "$dst" ] && return 0
  mkdir -p "$(dirname "$dst")"
  sed -E "s#^import \"(tendermint|gogoproto)/#import \"$prefix/\\1/#" "$src" >"$dst"
  local dep
  for dep in $(sed -nE 's#^import "([^"]+)";.*#\1#p' "$src"); do
    stage_file "$dep"
  done
}
stage_file tendermint/abci/types.proto

mkdir -p "$tmp/gen"
(cd "$stage" && find "$prefix" -name '*.proto' | sort) >"$tmp/files"
# shellcheck disable=SC2046
"$python" -m grpc_tools.protoc -I "$stage" -I "$grpc_include" \
  --python_out="$tmp/gen" --pyi_out="$tmp/gen" $(sed "s#^#$stage/#" "$tmp/files")

gen="$tmp/gen/$prefix"
find "$gen" -type d -exec sh -c 'for d; do : >"$d/__init__.py"; done' sh {} +
cat >"$gen/__init__.py" <<EOF
"""ABCI protobuf classes generated from CometBFT $version by scripts/gen-proto.sh; not committed.

Import what you need from medledger.consensus.proto.tendermint.abci.types_pb2.
"""
EOF
printf '%s' "$stamp_text" >"$gen/.stamp"

# Replace the previous generation in one move, so readers never see a half-written package.
rm -rf "$out.old"
[ -d "$out" ] && mv "$out" "$out.old"
mv "$gen" "$out"
rm -rf "$out.old"
echo "gen-proto: ABCI classes for CometBFT $version (gogoproto $gogo_version) in ${out#"$root"/}"
