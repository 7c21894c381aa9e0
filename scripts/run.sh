#!/usr/bin/env bash
# Builds and runs the embedding service on the bundled demo corpus, then follows its map.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh
cargo build --release --locked --bin embedding-service --bin embedding-map-client
bin="$CARGO_TARGET_DIR/release"
listen="${EMBEDDING_LISTEN:-127.0.0.1:50051}"

"$bin/embedding-service" --listen "$listen" &
service=$!
trap 'kill $service 2>/dev/null; wait $service 2>/dev/null' EXIT INT TERM

url="http://$listen"
cat <<TXT
embedding-service (pid $service) on the demo corpus
  gRPC:         $url   (embeddingmap.v1.EmbeddingMapService, grpc.health.v1, reflection)
  status once:  $bin/embedding-map-client --addr $url status
  follow:       $bin/embedding-map-client --addr $url watch
  grpcurl:      grpcurl -plaintext -d '{"omit_points":true}' $listen embeddingmap.v1.EmbeddingMapService/GetEmbeddingMap
TXT
for _ in $(seq 100); do "$bin/embedding-map-client" --addr "$url" status >/dev/null 2>&1 && break; sleep 0.1; done
"$bin/embedding-map-client" --addr "$url" watch
echo "the service keeps running; Ctrl-C stops it"
wait $service
