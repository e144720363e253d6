#!/usr/bin/env bash
# Chromium for tests/test_lab.py (a headless browser checks that JupyterLab renders a notebook's images and math).
# `make setup` runs this. Nothing to do when `chromium` is on PATH; otherwise, as root on Debian, install it with
# apt-get (measured: 9 s, 395 MiB installed, 113 MB downloaded); otherwise stop and say what to install.
set -euo pipefail
command -v chromium >/dev/null && exit 0
pkgs=(chromium fonts-dejavu-core)  # a font for the page's text (fontconfig would pick one anyway; named to be sure)
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "error: chromium is not on PATH; tests/test_lab.py needs it. Install it as root:" >&2
  echo "  apt-get update && apt-get install -y --no-install-recommends ${pkgs[*]}" >&2
  echo "(or put any Chromium/Chrome on PATH under the name 'chromium'), then run 'make setup' again." >&2
  exit 1
fi
echo "installing Debian packages ${pkgs[*]} (for tests/test_lab.py) ..."
log=$(mktemp); trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "error: apt-get could not install ${pkgs[*]} (output above)" >&2; exit 1
fi
command -v chromium >/dev/null || { echo "error: installed ${pkgs[*]} but chromium is still not on PATH" >&2; exit 1; }
echo "  $(chromium --version 2>/dev/null || echo chromium) installed"
