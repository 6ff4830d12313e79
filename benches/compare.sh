#!/usr/bin/env bash
# Backs up and restores the same generated ~1 GiB dataset with Cairn and with
# restic, in one run, and prints throughput, peak RSS and the ratios.
#
#   benches/compare.sh [DATASET_DIR]
#
# The dataset (20,000 small files plus two large compressible and two large
# incompressible files) is generated once, deterministically, and re-used.
# Both tools get warm page caches, the same compression level (zstd "auto",
# level 3) and the same machine at the same time. This is a benchmark to run
# and read, not a test: it asserts only that both restores equal the data.
# ROUNDS=N (default 2) repeats every measurement: best time, highest RSS.
set -euo pipefail
cd "$(dirname "$0")/.."

data="${1:-${TMPDIR:-/tmp}/cairn-bench-data}"
work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

command -v restic >/dev/null || { echo "restic is not installed (apt-get install restic)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is not installed (apt-get install time)" >&2; exit 1; }
cargo build --release --locked --bin cairn >&2
cairn=${CARGO_TARGET_DIR:-$PWD/target}/release/cairn

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
bytes=$(du -sb --exclude=.complete "$data" | cut -f1)
files=$(find "$data" -type f ! -name .complete | wc -l)
cat "$data"/large/* > /dev/null  # warm the page cache for both tools alike

export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench CAIRN_CACHE_DIR="$work/cairn-cache"
# Compile Cairn's adapter once so the measured run loads it from the cache.
"$cairn" -r "$work/warmup" init >/dev/null && "$cairn" -r "$work/warmup" backup "$data/large/compressible-0.log" >/dev/null

measure() {  # name, command...: prints "seconds peak_rss_kib"
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" > "$work/$name.out" 2> "$work/$name.err" || {
    echo "$name failed:" >&2; cat "$work/$name.err" >&2; exit 1; }
  cat "$work/$name.time" | tail -n 1
}

rounds=${ROUNDS:-2}
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b < a) ? b : a }'; }
most() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b > a) ? b : a }'; }
rb_s= rb_kib= cb_s= cb_kib= rr_s= rr_kib= cr_s= cr_kib=
# Each round writes into fresh folders and nothing is deleted until the end:
# ext4 scans past recently deleted inodes when creating files, which would
# penalise whichever tool restores right after a deletion. The order of the
# tools alternates between rounds for the same reason.
run_restic() {
  restic -r "$work/restic-repo-$1" init >/dev/null
  read -r s kib < <(measure restic-backup restic -r "$work/restic-repo-$1" backup --no-cache "$data")
  rb_s=$(best "$rb_s" "$s"); rb_kib=$(most "$rb_kib" "$kib")
  read -r s kib < <(measure restic-restore restic -r "$work/restic-repo-$1" restore --no-cache latest --target "$work/restic-out-$1")
  rr_s=$(best "$rr_s" "$s"); rr_kib=$(most "$rr_kib" "$kib")
}
run_cairn() {
  "$cairn" -r "$work/cairn-repo-$1" init >/dev/null
  read -r s kib < <(measure cairn-backup "$cairn" -r "$work/cairn-repo-$1" backup "$data")
  cb_s=$(best "$cb_s" "$s"); cb_kib=$(most "$cb_kib" "$kib")
  read -r s kib < <(measure cairn-restore "$cairn" -r "$work/cairn-repo-$1" restore latest --target "$work/cairn-out-$1")
  cr_s=$(best "$cr_s" "$s"); cr_kib=$(most "$cr_kib" "$kib")
}
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then run_restic "$round"; run_cairn "$round"; else run_cairn "$round"; run_restic "$round"; fi
  echo "round $round: best so far: restic backup ${rb_s}s restore ${rr_s}s; cairn backup ${cb_s}s restore ${cr_s}s" >&2
done
diff -r "$data" "$work/cairn-out-1$data" >/dev/null || { echo "cairn restored something different!" >&2; exit 1; }
diff -r "$data" "$work/restic-out-1$data" >/dev/null || { echo "restic restored something different!" >&2; exit 1; }
rsize=$(du -sb "$work/restic-repo-1" | cut -f1)
csize=$(du -sb "$work/cairn-repo-1" | cut -f1)

python3 - "$bytes" "$files" "$rb_s" "$rb_kib" "$cb_s" "$cb_kib" "$rr_s" "$rr_kib" "$cr_s" "$cr_kib" "$rsize" "$csize" "$(restic version | cut -d' ' -f2)" "$(nproc)" <<'PY'
import sys
b, files = int(sys.argv[1]), int(sys.argv[2])
rb, rbm, cb, cbm, rr, rrm, cr, crm = map(float, sys.argv[3:11])
rsize, csize, rver, cores = int(sys.argv[11]), int(sys.argv[12]), sys.argv[13], sys.argv[14]
mb = b / 1e6
print(f"dataset: {mb:.0f} MB in {files} files; {cores} cores; restic {rver}; best time and highest peak RSS of the rounds")
print(f"{'':16}{'restic':>14}{'cairn':>14}{'cairn/restic':>14}")
print(f"{'backup MB/s':16}{mb/rb:14.1f}{mb/cb:14.1f}{(mb/cb)/(mb/rb):14.2f}")
print(f"{'backup peak RSS':16}{rbm/1024:12.0f}MB{cbm/1024:12.0f}MB{cbm/rbm:14.2f}")
print(f"{'restore MB/s':16}{mb/rr:14.1f}{mb/cr:14.1f}{(mb/cr)/(mb/rr):14.2f}")
print(f"{'restore peak RSS':16}{rrm/1024:12.0f}MB{crm/1024:12.0f}MB{crm/rrm:14.2f}")
print(f"{'repository size':16}{rsize/1e6:12.0f}MB{csize/1e6:12.0f}MB{csize/rsize:14.2f}")
PY
