#!/usr/bin/env bash
# PostgreSQL point-in-time recovery under a write load: how far behind the
# repository the WAL stream is (the recovery point if the node were lost),
# and how long a restore to a point takes. A benchmark to run and read, not
# a test: it asserts only that each restore holds the rows it must.
#
#   benches/pitr.sh            (as root: the clusters run as postgres)
#
# A throw-away cluster (initdb, port 5470) is loaded by `pgbench -c 4 -j 2`
# for SECONDS (90) at scale SCALE (20), while a marker connection inserts a
# row every 100 ms and records, after each commit, its time and
# pg_current_wal_insert_lsn(). `cairn wal-stream --json` prints the
# position the repository holds after every flush; a commit's lag is the
# time from its acknowledgement to the first flush whose stored position
# reaches it. Reported per flush-secs (FLUSHES, "2 5 10"): p50, p99 and max
# lag, flushes, WAL written, repository size. Then, on the last run's
# repository: `restore --until latest --start` and a restore to the
# moment halfway through the load, timed, and their rows checked against
# the markers.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "benches/pitr.sh runs as root (the clusters run as postgres)" >&2; exit 1; }

seconds=${SECONDS_LOAD:-90}
scale=${SCALE:-20}
flushes=${FLUSHES:-"2 5 10"}
port=5470
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-pitr-bench.XXXXXX")
chmod 711 "$work"
stream_pid=
cleanup() {
  [ -n "$stream_pid" ] && kill "$stream_pid" 2>/dev/null
  for d in "$work"/src "$work"/restored-*; do
    [ -f "$d/postmaster.pid" ] && runuser -u postgres -- "$pgbin/pg_ctl" stop -m immediate -D "$d" >/dev/null 2>&1
  done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked --bin cairn >&2
# restore_command runs cairn as postgres: a copy it may run.
install -d -m 755 "$work/bin"
install -m 755 "${CARGO_TARGET_DIR:-$PWD/target}/release/cairn" "$work/bin/cairn"
cairn=$work/bin/cairn
export CAIRN_CACHE_DIR="$work/cache"

# --- the source cluster ------------------------------------------------------
install -d -o postgres -m 700 "$work/src"
runuser -u postgres -- "$pgbin/initdb" --auth=trust --no-sync -D "$work/src" >/dev/null
printf 'local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n' > "$work/src/pg_hba.conf"
printf "\nport = $port\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '$work/src'\nmax_wal_size = 2GB\n" >> "$work/src/postgresql.conf"
runuser -u postgres -- "$pgbin/pg_ctl" start -w -D "$work/src" -l "$work/src/server.log" >/dev/null
sql() { psql -h 127.0.0.1 -p $port -U postgres -X -qAt -d postgres "$@"; }
"$pgbin/pgbench" -h 127.0.0.1 -p $port -U postgres -i -s "$scale" -q postgres >/dev/null 2>&1
sql -c "CREATE TABLE marker (id serial PRIMARY KEY, at timestamptz NOT NULL)"

config() {
  cat > "$work/cairn.toml" <<EOF
[agent]
state-dir = "$work/state"
[tenants.bench]
repository = "$work/repo"
password-file = "$work/password"
[jobs.pg]
tenant = "bench"
adapter = "postgres"
config = { host = "127.0.0.1", port = $port, user = "postgres", mode = "physical" }
grants = { programs = ["pg_basebackup", "pg_receivewal", "psql", "tar", "$pgbin/pg_ctl"], connect = ["127.0.0.1:$port"] }
wal = { flush-secs = $1 }
EOF
}
echo bench > "$work/password"
C() { "$cairn" --config "$work/cairn.toml" "$@"; }

printf '%-11s %9s %9s %9s %8s %10s %10s\n' flush-secs "lag p50" "lag p99" "lag max" flushes "WAL MB" "repo MB"
for flush in $flushes; do
  first_marker=$(sql -c "SELECT coalesce(max(id), 0) FROM marker")
  rm -rf "$work/repo" "$work/state"
  sql -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots" >/dev/null
  config "$flush"
  C init --tenant bench >/dev/null
  wal_before=$(sql -c "SELECT pg_current_wal_lsn()")
  # Each status line, stamped with the time it was read.
  ( C --json wal-stream --job pg | while IFS= read -r line; do
      printf '%s %s\n' "$(date +%s.%N)" "$line"; done > "$work/stream-$flush.log" ) &
  stream_pid=$!
  for _ in $(seq 300); do
    [ "$(sql -c "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = 'cairn_pg'")" = t ] && break
    sleep 0.1
  done
  C backup --job pg >/dev/null
  ( while [ ! -e "$work/stop-markers" ]; do
      out=$(sql -c "INSERT INTO marker (at) VALUES (clock_timestamp()) RETURNING id" -c "SELECT pg_current_wal_insert_lsn()")
      printf '%s %s\n' "$(date +%s.%N)" "$(echo $out | tr '\n' ' ')"
      sleep 0.1
    done > "$work/markers-$flush.log" ) &
  markers_pid=$!
  "$pgbin/pgbench" -h 127.0.0.1 -p $port -U postgres -c 4 -j 2 -T "$seconds" -n postgres > "$work/pgbench-$flush.log" 2>&1
  touch "$work/stop-markers"; wait "$markers_pid"; rm -f "$work/stop-markers"
  sleep $((flush * 2 + 2))
  pkill -TERM -f -- "--config $work/cairn.toml --json wal-stream" || true
  wait "$stream_pid" 2>/dev/null || true
  stream_pid=
  wal_after=$(sql -c "SELECT pg_current_wal_lsn()")
  wal_mb=$(sql -c "SELECT round(pg_wal_lsn_diff('$wal_after', '$wal_before') / 1e6)")
  repo_mb=$(du -sm "$work/repo" | cut -f1)
  python3 - "$work/stream-$flush.log" "$work/markers-$flush.log" "$flush" "$wal_mb" "$repo_mb" <<'EOF'
import json, sys
def lsn(s):
    hi, lo = s.split('/')
    return (int(hi, 16) << 32) | int(lo, 16)
flushes = []
for line in open(sys.argv[1]):
    t, _, rest = line.partition(' ')
    try:
        st = json.loads(rest)
    except ValueError:
        continue
    if st.get('stored_lsn'):
        flushes.append((float(t), lsn(st['stored_lsn'])))
lags = []
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) < 3:
        continue
    acked, at = float(f[0]), lsn(f[2])
    stored = next((t for t, s in flushes if t >= acked and s >= at), None)
    if stored is None:
        sys.exit(f"marker at {f[2]} was never stored")
    lags.append(stored - acked)
lags.sort()
q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))]
print(f"{sys.argv[3]:<11} {q(0.5):8.2f}s {q(0.99):8.2f}s {lags[-1]:8.2f}s {len(flushes):8d} {sys.argv[4]:>10} {sys.argv[5]:>10}")
EOF
done

# --- restores (the last run's repository) ------------------------------------
# The last run's markers (earlier runs' repositories are gone).
markers=$(sql -c "SELECT count(*) FROM marker")
half=$(sql -c "SELECT at FROM marker WHERE id > $first_marker ORDER BY id OFFSET (SELECT count(*) / 2 FROM marker WHERE id > $first_marker) LIMIT 1")
# Commit times follow the row's clock_timestamp(): the row at `half` itself
# committed just after it.
half_rows=$(sql -c "SELECT count(*) FROM marker WHERE at < '$half'")
for what in latest half; do
  target=$work/restored-$what
  args=(--until latest)
  [ "$what" = half ] && args=(--until "$half" --action pause)
  start=$(date +%s.%N)
  report=$(C --json restore --job pg "${args[@]}" --start --target "$target" | tail -1)
  end=$(date +%s.%N)
  sock=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["socket_dir"])' "$report")
  rows=$(runuser -u postgres -- psql -h "$sock" -p 5432 -X -qAt -d postgres -c "SELECT count(*) FROM marker")
  want=$markers; [ "$what" = half ] && want=$half_rows
  [ "$rows" = "$want" ] || { echo "restore $what: $rows marker rows, expected $want" >&2; exit 1; }
  python3 - "$report" "$start" "$end" "$what" "$(du -sm "$target" | cut -f1)" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
print(f"restore --until {sys.argv[4]}: {float(sys.argv[3]) - float(sys.argv[2]):.1f} s in all "
      f"({r['seconds']:.1f} s of recovery, {r['wal_files_served']} WAL files served, "
      f"WAL {r['wal_from']}..{r['wal_to']}, {sys.argv[5]} MB data directory), state {r['state']}")
EOF
  runuser -u postgres -- "$pgbin/pg_ctl" stop -m fast -D "$target" >/dev/null
done
