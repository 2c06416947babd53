#!/usr/bin/env bash
# The machine a node needs: a 4-hospital CometBFT net on this machine, N synthetic patients
# ingested at each hospital, then each process's resident memory and each home's disk use.
#   scripts/measure-node.sh [PATIENTS] [DIR]        (docs/deploy.md quotes its output)
set -euo pipefail
PATIENTS=${1:-200}
DIR=${2:-$(mktemp -d)/net}
ML=${ML:-.venv/bin/medledger}
export PATH="$PWD/.tools/bin:$PATH"

"$ML" init "$DIR" --hospitals 4 --engine cometbft --block-time 1s >/dev/null
trap '"$ML" net down "$DIR" >/dev/null' EXIT
"$ML" net up "$DIR" >/dev/null
orgs=$(python3 -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))['hospitals']))" "$DIR/consortium.json")
"$ML" synth --patients "$PATIENTS" --hospitals "${orgs// /,}" --out "$DIR/../synth" >/dev/null
for org in $orgs; do
  "$ML" ingest --home "$DIR/hospitals/$org" "$DIR/../synth/$org" >"$DIR/../ingest-$org.log" 2>&1 \
    || { tail -20 "$DIR/../ingest-$org.log"; exit 1; }
  grep '^accepted' "$DIR/../ingest-$org.log"
done
sleep 10  # settle: audit journal, sync agents' copies
echo "after ingesting $PATIENTS synthetic patients (each at 2 or 3 hospitals):"
for org in $orgs; do
  for role in app cometbft; do
    pid=$(cat "$DIR/run/$org.$role.pid")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    printf '%-14s %-9s RSS %6d MiB (peak %6d MiB)\n' "$org" "$role" $((rss / 1024)) $((hwm / 1024))
  done
  home="$DIR/hospitals/$org"
  printf '%-14s disk: home %s: cometbft %s, ledger %s, vault %s\n' "$org" \
    "$(du -sh "$home" | cut -f1)" "$(du -sh "$home/cometbft" | cut -f1)" \
    "$(du -shc "$home"/ledger.db* | tail -1 | cut -f1)" \
    "$(du -shc "$home"/vault.db* 2>/dev/null | tail -1 | cut -f1)"
done
