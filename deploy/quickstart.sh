#!/usr/bin/env bash
# Cairn's main job on the embedded default, end to end: build, create a
# local repository, back up a directory through the sandboxed filesystem
# adapter, list, restore, verify, check, and compare the restored tree.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
cargo build --release --locked --bin cairn
cairn=$PWD/target/release/cairn

work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-quickstart.XXXXXX")
export CAIRN_REPOSITORY="$work/repo"
export CAIRN_PASSWORD="quickstart-password"
data="${1:-$PWD/agent/src}"

set -x
"$cairn" init
"$cairn" backup "$data" --tag quickstart
"$cairn" snapshots
"$cairn" ls latest | head -n 20
"$cairn" restore latest --target "$work/restored"
"$cairn" verify latest
"$cairn" check --read-data
diff -r --no-dereference "$data" "$work/restored$data"
set +x
echo "quickstart: restored tree is identical to $data (repository and copy in $work)"
