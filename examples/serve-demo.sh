#!/usr/bin/env bash
# Builds sluice, starts the embedded Kinesis-compatible stream on 127.0.0.1:4567 (data in
# ./sluice-data), shows it working with the stock AWS CLI, then keeps serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LISTEN=${SLUICE_LISTEN:-127.0.0.1:4567}
DATA_DIR=${SLUICE_DATA_DIR:-./sluice-data}
URL="http://$LISTEN"

echo "== building sluice (release)"
cargo build --release --locked -p sluice

if ! command -v aws >/dev/null 2>&1; then
    echo "== installing the AWS CLI into .venv-demo"
    [ -x .venv-demo/bin/aws ] || { python3 -m venv .venv-demo && .venv-demo/bin/pip install -q awscli; }
    PATH="$PWD/.venv-demo/bin:$PATH"
fi
export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1 AWS_PAGER="" \
    AWS_EC2_METADATA_DISABLED=true
kin() { aws --endpoint-url "$URL" --output json kinesis "$@"; }
# AWS CLI v2 reads blobs as base64 unless told otherwise; v1 takes them raw.
BINFMT=()
case "$(aws --version 2>&1)" in aws-cli/2*) BINFMT=(--cli-binary-format raw-in-base64-out) ;; esac

echo "== starting sluice serve on $URL (data: $DATA_DIR)"
./target/release/sluice serve --listen "$LISTEN" --data-dir "$DATA_DIR" &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 100); do curl -sf "$URL/health" >/dev/null 2>&1 && break; sleep 0.1; done

STREAM=demo-$(date +%s)
echo "== aws kinesis create-stream --stream-name $STREAM --shard-count 2"
kin create-stream --stream-name "$STREAM" --shard-count 2
kin wait stream-exists --stream-name "$STREAM"
for i in 1 2 3; do
    echo "== aws kinesis put-record (#$i)"
    kin put-record --stream-name "$STREAM" --partition-key "rider-$i" "${BINFMT[@]}" \
        --data "$(printf '{"rider":%d,"cadence":%d}' "$i" $((80 + i)))"
done
echo "== reading every shard from TRIM_HORIZON"
for shard in $(kin list-shards --stream-name "$STREAM" --query 'Shards[].ShardId' --output text); do
    it=$(kin get-shard-iterator --stream-name "$STREAM" --shard-id "$shard" \
        --shard-iterator-type TRIM_HORIZON --query ShardIterator --output text)
    kin get-records --shard-iterator "$it" --query 'Records[].Data' --output text | tr '\t' '\n' |
        while read -r d; do [ -n "$d" ] && echo "$shard: $(echo "$d" | base64 -d)"; done
done
echo "== metrics: $URL/metrics   health: $URL/health"
echo "== sluice is serving on $URL; point any AWS client at it. Ctrl-C stops it."
wait $SERVER
