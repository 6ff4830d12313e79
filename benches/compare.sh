#!/usr/bin/env bash
# Cairn against restic: the same data, the same machine, the same run.
# A benchmark to run and read, not a test: it asserts only that what each
# tool restores equals the data, and that both tools' `check` accept what
# the other wrote and pruned.
#
#   benches/compare.sh [DATASET_DIR]
#
# Parts (PARTS="local s3 history index scale", the default, runs them all):
#   local    backup (first, unchanged, --force) and restore into a local
#            repository, of the 1,051 MB dataset below;
#   s3       against a Garage S3 server the script starts on loopback, for
#            two sets (SETS="small all"): backup, then with empty caches
#            restore, verify, ls (cold and warm) and check --read-data;
#   history  an S3 repository holding SNAPSHOTS (1000) daily snapshots:
#            snapshots, forget --dry-run, forget, prune (each tool on its
#            own copy), then each tool checks the copy the other pruned;
#   index    the memory a backup's index takes per blob, in a repository
#            listing BLOBS (5,000,000) blobs;
#   scale    restore memory as the data grows: SCALE_GIB ("1 8") GiB of
#            random data backed up and restored by both tools.
# ROUNDS=N (default 2) repeats each timing: best time, highest RSS. The
# order of the tools alternates between rounds. CONNECTIONS=N sets Cairn's
# --connections. Data sets are generated once, deterministically, in
# DATASET_DIR (default $TMPDIR/cairn-bench-data) and reused.
set -euo pipefail
cd "$(dirname "$0")/.."

data="${1:-${TMPDIR:-/tmp}/cairn-bench-data}"
work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-bench.XXXXXX")
garage_pid=
cleanup() { [ -n "$garage_pid" ] && kill "$garage_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
# A measurement runs in $(...): when it fails it stops the whole script.
trap 'exit 1' TERM

parts=" ${PARTS:-local s3 history index scale} "
has() { [[ "$parts" == *" $1 "* ]]; }
rounds=${ROUNDS:-2}
command -v restic >/dev/null || { echo "restic is not installed (apt-get install restic)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is not installed (apt-get install time)" >&2; exit 1; }
if has s3 || has history; then
  garage=${CAIRN_GARAGE:-$HOME/.cache/cairn-tools/garage/bin/garage}
  [ -x "$garage" ] || { echo "Garage not found at $garage (tests/run builds it; or set CAIRN_GARAGE)" >&2; exit 1; }
fi
if has history; then
  command -v rclone >/dev/null || { echo "rclone is not installed (apt-get install rclone): it copies the history repository into Garage" >&2; exit 1; }
fi
cargo build --release --locked --bin cairn >&2
has index && cargo build --release --locked --example synthetic_index >&2
target=${CARGO_TARGET_DIR:-$PWD/target}/release
cairn=$target/cairn

export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
export CAIRN_CACHE_DIR="$work/cairn-cache" RESTIC_CACHE_DIR="$work/restic-cache"
[ -n "${CONNECTIONS:-}" ] && export CAIRN_CONNECTIONS=$CONNECTIONS

# --- the data ---------------------------------------------------------------
if [ ! -f "$data/.complete" ]; then
  echo "generating dataset in $data ..." >&2
  rm -rf "$data"
  python3 - "$data" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(42)
words = [b"backup", b"restore", b"cairn", b"restic", b"chunk", b"pack", b"index", b"tree", b"blob", b"snapshot"]
def text(n):
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
    return bytes(out[:n])
for i in range(20000):
    d = os.path.join(root, "small", f"{i // 500:03d}")
    os.makedirs(d, exist_ok=True)
    n = rng.randint(512, 16384)
    data = text(n) if i % 2 else rng.randbytes(n)
    with open(os.path.join(d, f"file-{i:05d}"), "wb") as f:
        f.write(data)
os.makedirs(os.path.join(root, "large"), exist_ok=True)
for i in range(2):
    with open(os.path.join(root, "large", f"compressible-{i}.log"), "wb") as f:
        for _ in range(210):
            f.write(text(1 << 20))
    with open(os.path.join(root, "large", f"random-{i}.bin"), "wb") as f:
        for _ in range(210):
            f.write(rng.randbytes(1 << 20))
open(os.path.join(root, ".complete"), "w").close()
PY
fi
cat "$data"/large/* > /dev/null  # warm the page cache for both tools alike

# Compile Cairn's adapter once so measured runs load it from the cache.
"$cairn" -r "$work/warmup" init >/dev/null && "$cairn" -r "$work/warmup" backup "$data/large/compressible-0.log" >/dev/null

measure() {  # name, command...: prints "seconds peak_rss_kib"
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" > "$work/$name.out" 2> "$work/$name.err" || {
    echo "$name failed:" >&2; tail -20 "$work/$name.err" >&2; kill -TERM $$; exit 1; }
  tail -n 1 "$work/$name.time"
}
results="$work/results"
: > "$results"
record() { echo "$1 $2 $3 $4" >> "$results"; }  # part op tool "s kib"
order() { [ $(($1 % 2)) = 1 ] && echo "restic cairn" || echo "cairn restic"; }
same() { diff -r "$1" "$2" >/dev/null || { echo "$3 restored something different from $1!" >&2; exit 1; }; }
# Before a local restore: the writes of earlier steps reach the disk, and
# (where the script may, as root) the page cache is dropped, so both tools
# read their repository from the disk, as a restore after a loss does.
# Cairn writes packs with direct I/O, so only restic's repository would
# otherwise be read from memory.
if [ -w /proc/sys/vm/drop_caches ]; then cold="cold page cache"; else cold="page cache NOT dropped (not root: restic's repository may be read from memory, Cairn's is not)"; fi
settle() { sync; { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null || true; }
size_mb() { du -sb --exclude=.complete "$1" | awk '{ printf "%d", $1 / 1e6 }'; }
notes="$work/notes"
: > "$notes"

# --- local ------------------------------------------------------------------
# Nothing restored is deleted until the end: ext4 creates files slowly for
# minutes after many were deleted, which would penalise whoever came next.
if has local; then
  echo "local: $(size_mb "$data") MB in $(find "$data" -type f ! -name .complete | wc -l) files" >&2
  echo "local: $(size_mb "$data") MB in $(find "$data" -type f ! -name .complete | wc -l) files, local repository; backups from a warm page cache, restores from a $cold" >> "$notes"
  for round in $(seq "$rounds"); do
    for tool in $(order "$round"); do
      repo="$work/local-$tool-$round" out="$work/local-out-$tool-$round"
      if [ $tool = restic ]; then
        restic -r "$repo" init >/dev/null
        record local backup restic "$(measure b restic -r "$repo" backup --no-cache "$data")"
        record local backup-unchanged restic "$(measure b restic -r "$repo" backup --no-cache "$data")"
        record local backup-force restic "$(measure b restic -r "$repo" backup --no-cache --force "$data")"
        settle
        record local restore restic "$(measure r restic -r "$repo" restore --no-cache latest --target "$out")"
      else
        "$cairn" -r "$repo" init >/dev/null
        record local backup cairn "$(measure b "$cairn" -r "$repo" backup "$data")"
        record local backup-unchanged cairn "$(measure b "$cairn" -r "$repo" backup "$data")"
        record local backup-force cairn "$(measure b "$cairn" -r "$repo" backup --force "$data")"
        settle
        record local restore cairn "$(measure r "$cairn" -r "$repo" restore latest --target "$out")"
      fi
      same "$data" "$out$data" $tool
    done
  done
  echo "local: repository size restic $(size_mb "$work/local-restic-1") MB, cairn $(size_mb "$work/local-cairn-1") MB" >> "$notes"
  rm -rf "$work"/local-*
fi

# --- Garage -----------------------------------------------------------------
if has s3 || has history; then
  source benches/garage.sh
  start_garage "$work/garage" 20G
  export AWS_ACCESS_KEY_ID=$key_id AWS_SECRET_ACCESS_KEY=$secret
  export AWS_DEFAULT_REGION=garage AWS_REGION=garage
  g bucket create bench >/dev/null
  g bucket allow --read --write --owner bench --key "$AWS_ACCESS_KEY_ID" >/dev/null
  url="http://127.0.0.1:$s3_port/bench"
fi
cold() { rm -rf "$work/cairn-cache/repos" "$work/restic-cache"; }

# --- s3 ---------------------------------------------------------------------
if has s3; then
  for set in ${SETS:-small all}; do
    src=$data; [ $set = small ] && src=$data/small
    echo "s3 $set: $(size_mb "$src") MB in $(find "$src" -type f ! -name .complete | wc -l) files" >&2
    echo "s3 $set: $(size_mb "$src") MB in $(find "$src" -type f ! -name .complete | wc -l) files, Garage on loopback, cold caches but for ls-warm" >> "$notes"
    restic -r "s3:$url/restic-$set" init >/dev/null
    "$cairn" -r "s3:$url/cairn-$set" init >/dev/null
    record s3-$set backup restic "$(measure b restic -r "s3:$url/restic-$set" backup --no-cache "$src")"
    record s3-$set backup cairn "$(measure b "$cairn" -r "s3:$url/cairn-$set" backup "$src")"
    for round in $(seq "$rounds"); do
      for tool in $(order "$round"); do
        cold
        if [ $tool = restic ]; then
          record s3-$set restore restic "$(measure r restic -r "s3:$url/restic-$set" restore latest --target "$work/r-$set-$round")"
          same "$src" "$work/r-$set-$round$src" restic
        else
          record s3-$set restore cairn "$(measure r "$cairn" -r "s3:$url/cairn-$set" restore latest --target "$work/c-$set-$round")"
          same "$src" "$work/c-$set-$round$src" cairn
        fi
      done
      cold; record s3-$set verify cairn "$(measure v "$cairn" -r "s3:$url/cairn-$set" verify latest)"
      cold; record s3-$set ls restic "$(measure l restic -r "s3:$url/restic-$set" ls latest)"
      cold; record s3-$set ls cairn "$(measure l "$cairn" -r "s3:$url/cairn-$set" ls latest)"
      record s3-$set ls-warm restic "$(measure l restic -r "s3:$url/restic-$set" ls latest)"
      record s3-$set ls-warm cairn "$(measure l "$cairn" -r "s3:$url/cairn-$set" ls latest)"
      cold; record s3-$set check-read-data restic "$(measure c restic -r "s3:$url/restic-$set" check --read-data)"
      cold; record s3-$set check-read-data cairn "$(measure c "$cairn" -r "s3:$url/cairn-$set" check --read-data)"
    done
  done
  rm -rf "$work"/r-* "$work"/c-*
fi

# --- history ----------------------------------------------------------------
# A repository of SNAPSHOTS daily backups of a small folder in which a few
# files change every day, made once (by Cairn, with --time: restic takes
# about a second a backup here) and kept next to the dataset; each run
# copies it into Garage twice, one copy per tool.
if has history; then
  snapshots=${SNAPSHOTS:-1000}
  hist="$data-history-$snapshots"
  if [ ! -f "$hist/.complete" ]; then
    echo "generating a repository of $snapshots daily snapshots in $hist (once) ..." >&2
    rm -rf "$hist"
    mkdir -p "$hist/src/app"
    "$cairn" -r "$hist/repo" init >/dev/null
    for i in $(seq -w 0 49); do head -c 16384 /dev/urandom > "$hist/src/app/file-$i"; done
    base=$(date -u -d "2026-01-01 03:00" +%s)
    for day in $(seq "$snapshots" -1 1); do
      for i in $(shuf -i 0-49 -n 5); do head -c 16384 /dev/urandom > "$hist/src/app/file-$(printf %02d "$i")"; done
      "$cairn" -r "$hist/repo" backup --host bench \
        --time "$(date -u -d "@$((base - day * 86400))" '+%Y-%m-%dT%H:%M:%SZ')" "$hist/src/app" >/dev/null
    done
    touch "$hist/.complete"
  fi
  echo "history: $snapshots daily snapshots, $(size_mb "$hist/repo") MB, Garage on loopback, cold caches" >> "$notes"
  export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other RCLONE_CONFIG_G_ENDPOINT="http://127.0.0.1:$s3_port" \
    RCLONE_CONFIG_G_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_G_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
    RCLONE_CONFIG_G_REGION=garage RCLONE_CONFIG_G_FORCE_PATH_STYLE=true
  # (AWS_CA_BUNDLE, which some machines set, breaks rclone's plain-HTTP S3.)
  for tool in restic cairn; do env -u AWS_CA_BUNDLE rclone copy --transfers 16 "$hist/repo" "g:bench/hist-$tool"; done
  policy="--keep-daily 7 --keep-weekly 5 --keep-monthly 12 --keep-yearly 3"
  hist() { if [ $1 = restic ]; then cmd=(restic -r "s3:$url/hist-restic"); else cmd=("$cairn" -r "s3:$url/hist-cairn"); fi; }
  for round in $(seq "$rounds"); do
    for tool in $(order "$round"); do
      hist $tool
      cold; record history snapshots $tool "$(measure s "${cmd[@]}" snapshots)"
      cold; record history forget-dry-run $tool "$(measure f "${cmd[@]}" forget $policy --dry-run)"
    done
  done
  for tool in restic cairn; do
    hist $tool
    cold; record history forget $tool "$(measure f "${cmd[@]}" forget $policy)"
    cold; record history prune $tool "$(measure p "${cmd[@]}" prune)"
    # Cairn also keeps the oldest snapshot while a count is left, as restic
    # 0.16 and later do (docs/retention.md); restic 0.14 does not.
    echo "history: $tool pruned its copy to $("${cmd[@]}" snapshots --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') snapshots" >> "$notes"
  done
  # Each tool checks what the other pruned, reading every pack.
  restic -r "s3:$url/hist-cairn" check --read-data >/dev/null || { echo "restic's check rejects the repository Cairn pruned" >&2; exit 1; }
  "$cairn" -r "s3:$url/hist-restic" check --read-data >/dev/null || { echo "Cairn's check rejects the repository restic pruned" >&2; exit 1; }
fi

# --- index ------------------------------------------------------------------
# A backup loads the whole index. The repository lists BLOBS made-up blobs
# (agent/examples/synthetic_index.rs); the same backup of one small file
# into an empty repository gives each tool's base.
if has index; then
  blobs=${BLOBS:-5000000}
  one="$work/one-file"; mkdir -p "$one"; head -c 4096 /dev/urandom > "$one/f"
  "$cairn" -r "$work/index-empty" init >/dev/null
  "$cairn" -r "$work/index-full" init >/dev/null
  "$target/examples/synthetic_index" "$work/index-full" "$blobs" >&2
  echo "index: $blobs blobs in $(ls "$work/index-full/index" | wc -l) index files of $(size_mb "$work/index-full/index") MB; a backup of one 4 KiB file" >> "$notes"
  for round in $(seq "$rounds"); do
    for tool in $(order "$round"); do
      for repo in empty full; do
        if [ $tool = restic ]; then
          record index "backup-$repo" restic "$(measure i restic -r "$work/index-$repo" backup --no-cache "$one")"
        else
          record index "backup-$repo" cairn "$(measure i "$cairn" -r "$work/index-$repo" backup "$one")"
        fi
      done
    done
  done
  echo "index: blobs=$blobs" >> "$notes"
  rm -rf "$work"/index-*
fi

# --- scale ------------------------------------------------------------------
if has scale; then
  for gib in ${SCALE_GIB:-1 8}; do
    src="$data-scale-$gib"
    if [ ! -f "$src/.complete" ]; then
      echo "generating $gib GiB of random data in $src (once) ..." >&2
      rm -rf "$src"; mkdir -p "$src"
      python3 -c '
import random, sys
rng = random.Random(int(sys.argv[2]))
with open(sys.argv[1] + "/data.bin", "wb") as f:
    for _ in range(int(sys.argv[2]) * 1024):
        f.write(rng.randbytes(1 << 20))
' "$src" "$gib"
      touch "$src/.complete"
    fi
    echo "scale-$gib: $gib GiB of random data in one file, local repository; restores from a $cold" >> "$notes"
    for tool in restic cairn; do
      repo="$work/scale-$tool" out="$work/scale-out-$tool"
      if [ $tool = restic ]; then
        restic -r "$repo" init >/dev/null
        record scale-$gib backup restic "$(measure b restic -r "$repo" backup --no-cache "$src")"
        settle
        record scale-$gib restore restic "$(measure r restic -r "$repo" restore --no-cache latest --target "$out")"
      else
        "$cairn" -r "$repo" init >/dev/null
        record scale-$gib backup cairn "$(measure b "$cairn" -r "$repo" backup "$src")"
        settle
        record scale-$gib restore cairn "$(measure r "$cairn" -r "$repo" restore latest --target "$out")"
      fi
      cmp "$src/data.bin" "$out$src/data.bin" || { echo "$tool restored something different from $src!" >&2; exit 1; }
      rm -rf "$repo" "$out"
    done
  done
fi

# --- report -----------------------------------------------------------------
python3 - "$results" "$notes" "$(restic version | cut -d' ' -f2)" "$(nproc)" "${CAIRN_CONNECTIONS:-default}" "$rounds" <<'PY'
import sys, collections
best = collections.defaultdict(lambda: [None, 0])
order = []
for line in open(sys.argv[1]):
    part, op, tool, secs, kib = line.split()
    if (part, op) not in order:
        order.append((part, op))
    b = best[(part, op, tool)]
    b[0] = float(secs) if b[0] is None else min(b[0], float(secs))
    b[1] = max(b[1], int(kib))
notes = open(sys.argv[2]).read().splitlines()
blobs = next((int(n.split("=")[1]) for n in notes if n.startswith("index: blobs=")), None)
print(f"{sys.argv[4]} cores; restic {sys.argv[3]}; cairn --connections {sys.argv[5]}; "
      f"best time and highest peak RSS of {sys.argv[6]} rounds")
for n in notes:
    if not n.startswith("index: blobs="):
        print("  " + n)
print(f"{'part':12}{'operation':18}{'restic s':>10}{'cairn s':>10}{'speed-up':>10}{'restic MB':>11}{'cairn MB':>10}")
for part, op in order:
    r, c = best.get((part, op, "restic")), best.get((part, op, "cairn"))
    rs = f"{r[0]:10.2f}" if r else f"{'—':>10}"
    ratio = f"{r[0] / c[0]:10.2f}" if r and c[0] > 0 else f"{'—':>10}"
    rm = f"{r[1] / 1024:11.0f}" if r else f"{'—':>11}"
    print(f"{part:12}{op:18}{rs}{c[0]:10.2f}{ratio}{rm}{c[1] / 1024:10.0f}")
if blobs:
    for tool in ("restic", "cairn"):
        full, empty = best[("index", "backup-full", tool)][1], best[("index", "backup-empty", tool)][1]
        print(f"index: {tool}: {(full - empty) * 1024 / blobs:.0f} bytes of peak RSS per blob "
              f"({full / 1024:.0f} MB with {blobs} blobs, {empty / 1024:.0f} MB empty)")
PY
