#!/usr/bin/env bash
# Backs up a PostgreSQL database of about 1 GB (pgbench -i -s 70) with
# Cairn's postgres adapter and compares the time with `pg_dump
# --format=custom -Z0 > /dev/null` alone, in the same run, on the same
# server and the same warm caches. The target: Cairn takes at most 1.25
# times as long.
#
#   benches/pg_dump.sh            # ROUNDS=N (default 3), SCALE=N (default 70)
#
# Each round runs both, alternating which goes first. A Cairn round is a
# first backup into a fresh local repository (everything is new: chunked,
# hashed, compressed, encrypted and written) followed by a second backup of
# the unchanged database into the same repository (deduplicated). This is a
# benchmark to run and read, not a test: it checks only that the dump in
# the snapshot has the size of pg_dump's.
set -euo pipefail
cd "$(dirname "$0")/.."

db=${DB:-cairn_bench}
scale=${SCALE:-70}
rounds=${ROUNDS:-3}
export PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres
for tool in pgbench pg_dump psql; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install postgresql-client)" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "/usr/bin/time is not installed (apt-get install time)" >&2; exit 1; }

cargo build --release --locked --bin cairn >&2
cairn=${CARGO_TARGET_DIR:-$PWD/target}/release/cairn

# The database is made once and reused: pgbench's four tables at the scale
# asked for.
if [ "$(psql -d "$db" -Atc 'SELECT count(*) FROM pgbench_branches' 2>/dev/null)" != "$scale" ]; then
  echo "creating database $db with pgbench -i -s $scale ..." >&2
  psql -d postgres -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  pgbench -i -q -s "$scale" "$db" >&2
  psql -d "$db" -qc "VACUUM ANALYZE"
fi
db_bytes=$(psql -d "$db" -Atc "SELECT pg_database_size(current_database())")

work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-pgbench.XXXXXX")
trap 'rm -rf "$work"' EXIT
export CAIRN_PASSWORD=bench CAIRN_CACHE_DIR="$work/cairn-cache"
config="{\"databases\": [\"$db\"]}"
grants=(--grant-program pg_dump --grant-program pg_dumpall --grant-program psql)

measure() {  # name, command...: prints "seconds peak_rss_kib"
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" > "$work/$name.out" 2> "$work/$name.err" || {
    echo "$name failed:" >&2; cat "$work/$name.err" >&2; exit 1; }
  tail -n 1 "$work/$name.time"
}

# Warm up: the server's buffers and the page cache for both alike, and the
# adapter's compiled code in Cairn's cache.
dump_bytes=$(pg_dump --format=custom -Z0 -d "$db" | wc -c)
"$cairn" -r "$work/warmup" init >/dev/null
"$cairn" -r "$work/warmup" backup --adapter postgres --adapter-config "$config" "${grants[@]}" >/dev/null

best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b < a) ? b : a }'; }
most() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b > a) ? b : a }'; }
pd_s= pd_kib= c1_s= c1_kib= c2_s= c2_kib=
run_pg_dump() {
  read -r s kib < <(measure pg_dump sh -c "pg_dump --format=custom -Z0 -d '$db' > /dev/null")
  pd_s=$(best "$pd_s" "$s"); pd_kib=$(most "$pd_kib" "$kib")
  echo "round $1: pg_dump ${s}s" >&2
}
run_cairn() {
  local repo="$work/repo-$1"
  "$cairn" -r "$repo" init >/dev/null
  read -r s kib < <(measure cairn-first "$cairn" -r "$repo" backup --adapter postgres --adapter-config "$config" "${grants[@]}")
  c1_s=$(best "$c1_s" "$s"); c1_kib=$(most "$c1_kib" "$kib")
  echo "round $1: cairn first backup ${s}s" >&2
  read -r s kib < <(measure cairn-second "$cairn" -r "$repo" backup --adapter postgres --adapter-config "$config" "${grants[@]}")
  c2_s=$(best "$c2_s" "$s"); c2_kib=$(most "$c2_kib" "$kib")
  echo "round $1: cairn second backup ${s}s" >&2
}
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then run_pg_dump "$round"; run_cairn "$round"; else run_cairn "$round"; run_pg_dump "$round"; fi
done

# The snapshot's dump has pg_dump's size (the same dump, stored whole).
stored=$("$cairn" -r "$work/repo-1" ls latest --json | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("path", "").endswith(".dump"):
        print(e.get("size", 0))')
[ "$stored" = "$dump_bytes" ] || { echo "the snapshot's dump is $stored bytes, pg_dump's $dump_bytes" >&2; exit 1; }
repo_bytes=$(du -sb "$work/repo-1" | cut -f1)

python3 - "$db_bytes" "$dump_bytes" "$repo_bytes" "$pd_s" "$pd_kib" "$c1_s" "$c1_kib" "$c2_s" "$c2_kib" "$(pg_dump --version)" "$(nproc)" "$rounds" <<'PY'
import sys
db, dump, repo = (int(x) for x in sys.argv[1:4])
pd, pdm, c1, c1m, c2, c2m = (float(x) for x in sys.argv[4:10])
version, cores, rounds = sys.argv[10], sys.argv[11], sys.argv[12]
print(f"database {db/1e6:.0f} MB, custom-format dump {dump/1e6:.0f} MB, repository {repo/1e6:.0f} MB; {cores} cores; {version}; best of {rounds} rounds")
print(f"{'':34}{'seconds':>9}{'peak RSS':>10}{'/ pg_dump':>11}")
print(f"{'pg_dump -Fc -Z0 > /dev/null':34}{pd:9.2f}{pdm/1024:8.0f}MB{1:11.2f}")
print(f"{'cairn backup, fresh repository':34}{c1:9.2f}{c1m/1024:8.0f}MB{c1/pd:11.2f}")
print(f"{'cairn backup, unchanged database':34}{c2:9.2f}{c2m/1024:8.0f}MB{c2/pd:11.2f}")
print(f"target: cairn's first backup at most 1.25x pg_dump's time: {'met' if c1 <= 1.25 * pd else 'NOT met'} ({c1/pd:.2f}x)")
PY
