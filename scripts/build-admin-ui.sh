#!/usr/bin/env bash
# Builds the admin page (admin-ui/dist), which the api-service embeds at compile time: its client
# code is generated from proto/ by protoc-gen-es, then bundled by Vite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
npm_ci_if_changed admin-ui
cd admin-ui
npm run --silent build
