#!/usr/bin/env bash
# Installs prometheus and promtool from Debian's `prometheus` package when either is missing.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "error: prometheus and promtool are missing and this is not a Debian-like system;" \
       "install Prometheus 2.x so both are on PATH" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "error: installing Debian's prometheus package needs root or sudo" >&2; exit 1; }
  sudo="sudo"
fi
echo "==> installing Debian's prometheus package (prometheus, promtool)" >&2
$sudo apt-get update -qq
# The package enables a system service; none is wanted here, and none starts without systemd.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
$sudo sh -c 'command -v systemctl >/dev/null && systemctl disable --now prometheus >/dev/null 2>&1 || true'
prometheus --version 2>&1 | head -1 >&2
