#!/usr/bin/env bash
# Installs the system packages the build needs on Debian: cmake and BLAS/LAPACK for the FAISS
# build; Node.js for the admin page; sqlite3, python3-venv, Chromium and strace for the tests;
# postgresql for the tests on PostgreSQL (each starts its own server with initdb; the package's
# own cluster is not used);
# prometheus for its promtool (the tests lint the metrics and unit-test the alert rules; the
# package also ships a Prometheus server unit, which systemd starts where it runs); curl for the
# demo. Only what is missing is installed.
set -euo pipefail

packages=(cmake g++ make libopenblas-dev liblapack-dev sqlite3 curl python3 python3-venv chromium strace prometheus postgresql)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
