#!/usr/bin/env bash
# Cairn against restic on a Garage S3 server this script starts on
# loopback: the same data, the same server, the same run.
#
#   benches/s3.sh [DATASET_DIR]
#
# For two data sets (the 20,000 small files of compare.sh's dataset, and
# the whole dataset: small files plus four 210 MiB files), each tool backs
# up into its own prefix of one bucket, then, with an empty cache as on a
# machine being rebuilt, restores; then `ls`, `verify` (Cairn) and
# `check --read-data`. Every restore is compared with the data (diff -r).
# CONNECTIONS=N sets Cairn's --connections (default: Cairn's own);
# SETS="small" (default "small all") picks the data sets.
# ROUNDS=N (default 2) repeats the read side: best time, highest RSS.
set -euo pipefail
cd "$(dirname "$0")/.."

data="${1:-${TMPDIR:-/tmp}/cairn-bench-data}"
work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-bench-s3.XXXXXX")
garage_pid=
cleanup() { [ -n "$garage_pid" ] && kill "$garage_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

garage=${CAIRN_GARAGE:-$HOME/.cache/cairn-tools/garage/bin/garage}
[ -x "$garage" ] || { echo "Garage not found at $garage (tests/run builds it; or set CAIRN_GARAGE)" >&2; exit 1; }
command -v restic >/dev/null || { echo "restic is not installed (apt-get install restic)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is not installed (apt-get install time)" >&2; exit 1; }
[ -f "$data/.complete" ] || { echo "no dataset in $data: run benches/compare.sh once to generate it" >&2; exit 1; }
cargo build --release --locked --bin cairn >&2
cairn=${CARGO_TARGET_DIR:-$PWD/target}/release/cairn

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3_port=$(port); rpc_port=$(port)
mkdir -p "$work/garage"
cat > "$work/garage/garage.toml" <<EOF
metadata_dir = "$work/garage/meta"
data_dir = "$work/garage/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"
EOF
g() { "$garage" -c "$work/garage/garage.toml" "$@"; }
"$garage" -c "$work/garage/garage.toml" server > "$work/garage/log" 2>&1 &
garage_pid=$!
for _ in $(seq 100); do g status >/dev/null 2>&1 && break; sleep 0.2; done
node=$(g status | awk 'length($1) == 16 && $1 ~ /^[0-9a-f]+$/ { print $1; exit }')
g layout assign -z dc1 -c 10G "$node" >/dev/null
g layout apply --version 1 >/dev/null
key=$(g key create bench)
export AWS_ACCESS_KEY_ID=$(echo "$key" | awk -F': *' '/Key ID/ { print $2 }')
export AWS_SECRET_ACCESS_KEY=$(echo "$key" | awk -F': *' '/Secret key/ { print $2 }')
export AWS_DEFAULT_REGION=garage AWS_REGION=garage
g bucket create bench >/dev/null
g bucket allow --read --write --owner bench --key "$AWS_ACCESS_KEY_ID" >/dev/null
url="http://127.0.0.1:$s3_port/bench"

export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
export CAIRN_CACHE_DIR="$work/cairn-cache" RESTIC_CACHE_DIR="$work/restic-cache"
[ -n "${CONNECTIONS:-}" ] && export CAIRN_CONNECTIONS=$CONNECTIONS

measure() {  # name, command...: prints "seconds peak_rss_kib"
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" > "$work/$name.out" 2> "$work/$name.err" || {
    echo "$name failed:" >&2; tail -20 "$work/$name.err" >&2; exit 1; }
  tail -n 1 "$work/$name.time"
}
cold() { rm -rf "$work/cairn-cache/repos" "$work/restic-cache"; }
rounds=${ROUNDS:-2}
results="$work/results"
: > "$results"
record() { echo "$1 $2 $3 $4" >> "$results"; }  # set op tool "s kib"

for set in ${SETS:-small all}; do
  src=$data; [ $set = small ] && src=$data/small
  bytes=$(du -sb --exclude=.complete "$src" | cut -f1)
  files=$(find "$src" -type f ! -name .complete | wc -l)
  echo "$set: $((bytes / 1000000)) MB in $files files" >&2
  echo "$set $bytes $files" >> "$work/sets"
  restic -r "s3:$url/restic-$set" init >/dev/null
  "$cairn" -r "s3:$url/cairn-$set" init >/dev/null
  record $set backup restic "$(measure rb restic -r "s3:$url/restic-$set" backup --no-cache "$src")"
  record $set backup cairn "$(measure cb "$cairn" -r "s3:$url/cairn-$set" backup "$src")"
  # Restored files are deleted only at the end: ext4 is slow to create
  # files for minutes after many were deleted. The order of the tools
  # alternates between rounds for the same reason.
  for round in $(seq "$rounds"); do
    for tool in $( [ $((round % 2)) = 1 ] && echo "restic cairn" || echo "cairn restic" ); do
      cold
      if [ $tool = restic ]; then
        record $set restore restic "$(measure rr restic -r "s3:$url/restic-$set" restore latest --target "$work/r-$set-$round")"
        diff -r "$src" "$work/r-$set-$round$src" >/dev/null || { echo "restic restored something different!" >&2; exit 1; }
      else
        record $set restore cairn "$(measure cr "$cairn" -r "s3:$url/cairn-$set" restore latest --target "$work/c-$set-$round")"
        diff -r "$src" "$work/c-$set-$round$src" >/dev/null || { echo "cairn restored something different!" >&2; exit 1; }
      fi
    done
    cold; record $set verify cairn "$(measure cv "$cairn" -r "s3:$url/cairn-$set" verify latest)"
    cold; record $set ls restic "$(measure rl restic -r "s3:$url/restic-$set" ls latest)"
    cold; record $set ls cairn "$(measure cl "$cairn" -r "s3:$url/cairn-$set" ls latest)"
    record $set ls-warm restic "$(measure rl restic -r "s3:$url/restic-$set" ls latest)"
    record $set ls-warm cairn "$(measure cl "$cairn" -r "s3:$url/cairn-$set" ls latest)"
    cold; record $set check-read-data restic "$(measure rc restic -r "s3:$url/restic-$set" check --read-data)"
    cold; record $set check-read-data cairn "$(measure cc "$cairn" -r "s3:$url/cairn-$set" check --read-data)"
  done
done

python3 - "$results" "$work/sets" "$(restic version | cut -d' ' -f2)" "$(nproc)" "${CAIRN_CONNECTIONS:-default}" <<'PY'
import sys, collections
best = collections.defaultdict(lambda: [None, 0])
for line in open(sys.argv[1]):
    s, op, tool, secs, kib = line.split()
    b = best[(s, op, tool)]
    b[0] = float(secs) if b[0] is None else min(b[0], float(secs))
    b[1] = max(b[1], int(kib))
sets = [l.split() for l in open(sys.argv[2])]
print(f"Garage on loopback; {sys.argv[4]} cores; restic {sys.argv[3]}; cairn --connections {sys.argv[5]}; cold caches except ls-warm")
print(f"{'set':6}{'operation':17}{'restic s':>10}{'cairn s':>10}{'speed-up':>10}{'restic MB':>11}{'cairn MB':>10}")
for s, b, f in sets:
    for op in ["backup", "restore", "verify", "ls", "ls-warm", "check-read-data"]:
        r, c = best.get((s, op, "restic")), best.get((s, op, "cairn"))
        if c is None: continue
        rs = f"{r[0]:10.2f}" if r else f"{'—':>10}"
        ratio = f"{r[0] / c[0]:10.2f}" if r and c[0] > 0 else f"{'—':>10}"
        rm = f"{r[1] / 1024:11.0f}" if r else f"{'—':>11}"
        print(f"{s:6}{op:17}{rs}{c[0]:10.2f}{ratio}{rm}{c[1] / 1024:10.0f}")
PY
