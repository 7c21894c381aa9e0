#!/usr/bin/env bash
# Builds and runs both services on the bundled demo corpus, seeds the demo items, prints the
# URLs and the admin token, then follows the map until it is ready. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/install-deps.sh
scripts/build-admin-ui.sh
cargo build --release --locked --bin embedding-service --bin embedding-map-client --bin api-service
bin="$CARGO_TARGET_DIR/release"

embedding_listen="${EMBEDDING_LISTEN:-127.0.0.1:50051}"
grpc_listen="${API_GRPC_LISTEN:-127.0.0.1:8080}"
http_listen="${API_HTTP_LISTEN:-127.0.0.1:8081}"
database="${API_DATABASE:-$HOME/.cache/embedding-map/demo/api.sqlite3}"
export API_ADMIN_TOKEN="${API_ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}"

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
"$bin/embedding-service" --listen "$embedding_listen" --map-store "$(dirname "$database")/maps" & pids+=($!)
"$bin/api-service" --grpc-listen "$grpc_listen" --http-listen "$http_listen" --database "$database" \
  --embedding-url "http://$embedding_listen" --cors-origins "http://$http_listen" & pids+=($!)

for _ in $(seq 100); do curl -fsS "http://$http_listen/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
python3 scripts/seed_demo_items.py "http://$http_listen" "$API_ADMIN_TOKEN"

cat <<TXT

embedding-service  gRPC  http://$embedding_listen   (embeddingmap.v1.EmbeddingMapService, health, reflection)
api-service        gRPC  http://$grpc_listen   (gRPC and gRPC-web: embeddingmap.api.v1.*)
api-service        HTTP  http://$http_listen   (JSON API, /livez, /readyz)
admin page               http://$http_listen/admin/   (sign in with the admin token)
database           $database
admin token        $API_ADMIN_TOKEN

  curl -i -H "Authorization: Bearer $API_ADMIN_TOKEN" http://$http_listen/api/admin/embedding-map
  curl -i -H 'content-type: application/json' -d '{"item_id": 3, "kind": "view"}' http://$http_listen/api/events
  $bin/embedding-map-client --addr http://$embedding_listen watch

TXT
"$bin/embedding-map-client" --addr "http://$embedding_listen" watch | tail -n 3
curl -sS -o /dev/null -w "GET /api/admin/embedding-map -> %{http_code}\n" -H "Authorization: Bearer $API_ADMIN_TOKEN" \
  "http://$http_listen/api/admin/embedding-map"
echo "both services keep running; Ctrl-C stops them"
wait
