#!/usr/bin/env bash
# Debian's Chromium, for the dashboard's headless-browser test (it skips cleanly without it). Needs root.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "skipping Chromium: needs root and apt-get (the dashboard browser test will be skipped)" >&2
  exit 0
fi
apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
