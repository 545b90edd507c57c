#!/usr/bin/env bash
# The whole test suite: vet, staticcheck, the tests with the race detector
# (end-to-end ones against a real Mosquitto), and a short run of every fuzz
# target, and a smoke run of the load harness. Needs Go and the Debian
# packages mosquitto, mosquitto-clients and haproxy.
#   FUZZTIME=10s (default) sets how long each fuzz target runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin"
FUZZTIME="${FUZZTIME:-10s}"

echo "== gofmt"
unformatted="$(gofmt -l .)"
if [ -n "$unformatted" ]; then echo "not gofmt-ed:"; echo "$unformatted"; exit 1; fi

echo "== go vet"
go vet ./...

echo "== staticcheck (pinned as a tool in go.mod)"
go tool staticcheck ./...

echo "== example policies' Rego tests (moat policy test)"
for dir in policies/*/; do
  go run ./cmd/moat policy test "$dir"
done

echo "== go test -race"
go test -race -count=1 -timeout 20m ./...

echo "== allocation counts (without the race detector, which allocates)"
go test -count=1 -run 'AllocatesNothing|NoAlloc' ./proxy ./codec

echo "== load harness smoke run (bench/, seconds; -compare with a second build)"
cmpdir="$(mktemp -d)"
go build -o "$cmpdir/moat" ./cmd/moat
go run ./bench -smoke -compare "$cmpdir/moat" > /dev/null
rm -rf "$cmpdir"

# fuzz_one runs one target. Go 1.26's fuzz coordinator can fail a run at
# the end of a -fuzztime duration with a bare "context deadline exceeded"
# and no failing input (golang/go#75804, fixed in Go 1.27): only that
# signature, with no new input written to testdata/fuzz, is run once more.
# Any failure that writes an input, or any other error, fails the suite.
inputs() { if [ -d "$1" ]; then ls "$1" | wc -l; else echo 0; fi; }
fuzz_one() {
  local pkg=$1 dir=$2 target=$3 out before after
  before=$(inputs "$dir/testdata/fuzz/$target")
  if out=$(go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg" 2>&1); then
    printf '%s\n' "$out" | tail -n 2
    return 0
  fi
  printf '%s\n' "$out" | tail -n 25
  after=$(inputs "$dir/testdata/fuzz/$target")
  if [ "$after" = "$before" ] && printf '%s\n' "$out" | grep -q '^    context deadline exceeded$'; then
    echo "(the fuzz coordinator's own deadline, no failing input: golang/go#75804; once more)"
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg"
    return
  fi
  return 1
}

echo "== fuzz ($FUZZTIME per target)"
for pkg in $(go list ./...); do
  dir="$(go list -f '{{.Dir}}' "$pkg")"
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    echo "-- $pkg $target"
    fuzz_one "$pkg" "$dir" "$target"
  done
done
echo "== all tests passed"
