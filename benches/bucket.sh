#!/usr/bin/env bash
# Cairn's s3-bucket adapter against `rclone copy`: the same bucket, the
# same machine, the same run. A benchmark to run and read, not a test: it
# asserts only that what each tool copied has every object.
#
#   benches/bucket.sh
#
# A Garage server on loopback holds bucket `media`: SMALL (5000) objects of
# 1 to 16 KiB and LARGE (4) objects of LARGE_MIB (256) MiB, random. Timed:
#   cairn   `cairn backup` of the bucket into a fresh local repository
#           (chunked, deduplicated, compressed, encrypted);
#   rclone  `rclone copy` of the bucket into a fresh local directory.
# Then peak RSS against object size: a bucket holding one object of 64 MiB,
# then one of 1 GiB, each backed up by Cairn. ROUNDS=N (default 2) repeats
# each timing, the order of the tools alternating: best time, highest RSS.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-bucket-bench.XXXXXX")
garage_pid=
cleanup() { [ -n "$garage_pid" ] && kill "$garage_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

rounds=${ROUNDS:-2}
small=${SMALL:-5000}
large=${LARGE:-4}
large_mib=${LARGE_MIB:-256}
for tool in rclone /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install rclone time)" >&2; exit 1; }
done
garage=${CAIRN_GARAGE:-$HOME/.cache/cairn-tools/garage/bin/garage}
[ -x "$garage" ] || { echo "Garage not found at $garage (tests/run builds it; or set CAIRN_GARAGE)" >&2; exit 1; }
cargo build --release --locked --bin cairn >&2
cairn=${CARGO_TARGET_DIR:-$PWD/target}/release/cairn
export CAIRN_PASSWORD=bench CAIRN_CACHE_DIR="$work/cairn-cache"
# rclone refuses a custom CA bundle on plain http (some machines set one).
unset AWS_CA_BUNDLE

# --- Garage -----------------------------------------------------------------
source benches/garage.sh
start_garage "$work/garage" 10G
for b in media one-64m one-1g warm; do
  g bucket create "$b" >/dev/null
  g bucket allow --read --write --owner "$b" --key "$key_id" >/dev/null
done
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$key_id" "$secret" > "$work/creds"
export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other RCLONE_CONFIG_G_ENDPOINT="http://127.0.0.1:$s3_port" \
  RCLONE_CONFIG_G_REGION=garage RCLONE_CONFIG_G_ACCESS_KEY_ID="$key_id" RCLONE_CONFIG_G_SECRET_ACCESS_KEY="$secret" \
  RCLONE_CONFIG_G_FORCE_PATH_STYLE=true

# --- the data ---------------------------------------------------------------
echo "filling the buckets ..." >&2
python3 - "$work/data" "$small" "$large" "$large_mib" <<'EOF'
import os, random, sys
root, small, large, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(16)
for i in range(small):
    d = os.path.join(root, "media", f"small/{i % 50:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{i:05d}.bin"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 16384)))
os.makedirs(os.path.join(root, "media", "large"), exist_ok=True)
for i in range(large):
    with open(os.path.join(root, "media", "large", f"{i}.bin"), "wb") as f:
        for _ in range(mib):
            f.write(rng.randbytes(1 << 20))
for name, size in (("one-64m", 64), ("one-1g", 1024)):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    with open(os.path.join(root, name, "object.bin"), "wb") as f:
        for _ in range(size):
            f.write(rng.randbytes(1 << 20))
EOF
mkdir -p "$work/data/warm" && echo warm-up > "$work/data/warm/object"
for b in media one-64m one-1g warm; do rclone copy --transfers 8 "$work/data/$b" "g:$b"; done
rm -rf "$work/data"

grant() { echo "$1=http://127.0.0.1:$s3_port/$1?region=garage&path-style=true&concurrency=16&credentials-file=$work/creds"; }

# One measurement: wall seconds and peak RSS (MiB) of a command.
measure() {
  /usr/bin/time -f '%e %M' -o "$work/time" "$@" > "$work/out" 2>&1 || { cat "$work/out" >&2; exit 1; }
  awk '{printf "%s %d\n", $1, $2/1024}' "$work/time"
}

cairn_backup() { # bucket
  # A fresh repository and repository cache; the compiled adapter stays
  # cached, as it does on a node after the first run (see warm-up below).
  rm -rf "$work/repo"
  find "$work/cairn-cache" -mindepth 1 -maxdepth 1 ! -name components -exec rm -rf {} + 2>/dev/null || true
  CAIRN_REPOSITORY="$work/repo" "$cairn" init > /dev/null
  measure env CAIRN_REPOSITORY="$work/repo" "$cairn" backup --adapter s3-bucket \
    --grant-bucket "$(grant "$1")" --adapter-config '{"concurrency":16}'
}
rclone_copy() {
  rm -rf "$work/copy"
  measure rclone copy --transfers 16 --checkers 16 g:media "$work/copy"
}

# Warm-up, not timed: compiles the s3-bucket adapter into Cairn's cache
# once (a node does that on its first run, then reuses it).
read -r first_run _ < <(cairn_backup warm)

best() { sort -n -k1,1 | head -1 | awk '{print $1}'; }
peak() { sort -n -k2,2 | tail -1 | awk '{print $2}'; }
: > "$work/cairn.t"; : > "$work/rclone.t"
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then
    cairn_backup media >> "$work/cairn.t"; rclone_copy >> "$work/rclone.t"
  else
    rclone_copy >> "$work/rclone.t"; cairn_backup media >> "$work/cairn.t"
  fi
done
copied=$(find "$work/copy" -type f | wc -l)
[ "$copied" = $((small + large)) ] || { echo "rclone copied $copied objects" >&2; exit 1; }
objects=$(CAIRN_REPOSITORY="$work/repo" "$cairn" ls latest | grep -c '^/objects/' || true)
[ "$objects" -ge $((small + large)) ] || { echo "cairn stored $objects objects" >&2; exit 1; }
bytes=$(du -sb "$work/copy" | awk '{print $1}')
repo=$(du -sb "$work/repo" | awk '{print $1}')

echo
echo "bucket: $small objects of 1-16 KiB + $large of $large_mib MiB ($((bytes / 1048576)) MiB), Garage on loopback, best of $rounds"
printf '%-34s %10s %12s\n' tool seconds "peak RSS MiB"
printf '%-34s %10s %12s\n' "cairn backup (into a repository)" "$(best < "$work/cairn.t")" "$(peak < "$work/cairn.t")"
printf '%-34s %10s %12s\n' "rclone copy (into a directory)" "$(best < "$work/rclone.t")" "$(peak < "$work/rclone.t")"
echo "repository: $((repo / 1048576)) MiB for $((bytes / 1048576)) MiB of objects"
echo "cairn's times exclude compiling the adapter, cached by an untimed first run (${first_run} s for one tiny object)"
echo
printf '%-34s %10s %12s\n' "cairn backup of one object" seconds "peak RSS MiB"
for b in one-64m one-1g; do
  read -r t m < <(cairn_backup "$b")
  printf '%-34s %10s %12s\n' "$b" "$t" "$m"
done
