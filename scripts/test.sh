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

echo "== fuzz ($FUZZTIME per target)"
for pkg in $(go list ./...); do
  dir="$(go list -f '{{.Dir}}' "$pkg")"
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    echo "-- $pkg $target"
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg"
  done
done
echo "== all tests passed"
