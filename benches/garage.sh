# Sourced by the benchmarks: a Garage S3 server on loopback ports.
#
#   start_garage DIR CAPACITY
#
# writes DIR/garage.toml (region "garage"), starts the server (log in
# DIR/log), lays out one node of CAPACITY and creates a key. Sets
# garage_pid, s3_port, key_id and secret, and defines `g`, the garage CLI
# on this server. Needs $garage (the binary).
start_garage() {
  garage_dir=$1
  local capacity=$2 rpc_port key node
  port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  s3_port=$(port); rpc_port=$(port)
  mkdir -p "$garage_dir"
  cat > "$garage_dir/garage.toml" <<EOF
metadata_dir = "$garage_dir/meta"
data_dir = "$garage_dir/data"
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
  g() { "$garage" -c "$garage_dir/garage.toml" "$@"; }
  "$garage" -c "$garage_dir/garage.toml" server > "$garage_dir/log" 2>&1 &
  garage_pid=$!
  for _ in $(seq 100); do g status >/dev/null 2>&1 && break; sleep 0.2; done
  node=$(g status | awk 'length($1) == 16 && $1 ~ /^[0-9a-f]+$/ { print $1; exit }')
  g layout assign -z dc1 -c "$capacity" "$node" >/dev/null
  g layout apply --version 1 >/dev/null
  key=$(g key create bench)
  key_id=$(echo "$key" | awk -F': *' '/Key ID/ { print $2 }')
  secret=$(echo "$key" | awk -F': *' '/Secret key/ { print $2 }')
}
