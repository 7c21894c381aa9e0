#!/usr/bin/env bash
# Builds and runs both services on the bundled demo corpus, seeds the demo items, prints the
# URLs and the admin token, then follows the map until it is ready. Ctrl-C stops everything.
#
#   scripts/run.sh              one api-service on SQLite (the default)
#   scripts/run.sh --postgres   two api-service replicas on one PostgreSQL, a server of their own
#                               started here (initdb under ~/.cache/embedding-map/demo/postgres,
#                               or /var/tmp/embedding-map-demo-postgres as root)
set -euo pipefail
postgres=false
[[ "${1:-}" == "--postgres" ]] && postgres=true
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
stop_postgres=true
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; $stop_postgres' EXIT INT TERM
map_store="$HOME/.cache/embedding-map/demo/maps"
"$bin/embedding-service" --listen "$embedding_listen" --map-store "$map_store" & pids+=($!)

replica2=""
if $postgres; then
  # A PostgreSQL of the demo's own, as the postgres user when run as root (it refuses root).
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  pgdir="$HOME/.cache/embedding-map/demo/postgres"
  pgport="${PGPORT:-5433}"
  as_pg=()
  if [[ $(id -u) -eq 0 ]]; then
    # Outside root's home, which the postgres user cannot enter.
    as_pg=(runuser -u postgres --)
    pgdir=/var/tmp/embedding-map-demo-postgres
  fi
  mkdir -p "$pgdir"
  [[ ${#as_pg[@]} -eq 0 ]] || chown postgres "$pgdir"
  [[ -f "$pgdir/data/PG_VERSION" ]] || "${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -A trust -U api --no-instructions >/dev/null
  # A server left running by an earlier run is used as it is (and left running).
  if ! "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" status >/dev/null; then
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w \
      -o "-p $pgport -k $pgdir -c listen_addresses=127.0.0.1" start >/dev/null
    stop_postgres="${as_pg[*]} $pgbin/pg_ctl -D $pgdir/data -m fast -w stop"
  fi
  psql -h 127.0.0.1 -p "$pgport" -U api -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'api'" | grep -q 1 ||
    psql -h 127.0.0.1 -p "$pgport" -U api -d postgres -qc "CREATE DATABASE api"
  database="postgres://api@127.0.0.1:$pgport/api"
  # The second replica: the same database, the next two ports.
  replica2="127.0.0.1:8083"
  "$bin/api-service" --grpc-listen 127.0.0.1:8082 --http-listen "$replica2" --database "$database" \
    --embedding-url "http://$embedding_listen" --cors-origins "http://$replica2" & pids+=($!)
fi
"$bin/api-service" --grpc-listen "$grpc_listen" --http-listen "$http_listen" --database "$database" \
  --embedding-url "http://$embedding_listen" --cors-origins "http://$http_listen" & pids+=($!)

for _ in $(seq 100); do curl -fsS "http://$http_listen/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
python3 scripts/seed_demo_items.py "http://$http_listen" "$API_ADMIN_TOKEN"

cat <<TXT

embedding-service  gRPC  http://$embedding_listen   (embeddingmap.v1.EmbeddingMapService, health, reflection)
api-service        gRPC  http://$grpc_listen   (gRPC and gRPC-web: embeddingmap.api.v1.*)
api-service        HTTP  http://$http_listen   (JSON API, /livez, /readyz)
admin page               http://$http_listen/admin/   (sign in with the admin token)
database           $database${replica2:+
second replica     http://$replica2   (the same database: an event sent to either is counted once)}
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
