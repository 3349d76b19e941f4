#!/usr/bin/env bash
# Installs Debian packages for the other scripts: as root with apt-get, refreshing the package
# lists only when an install from the current ones fails (a fresh machine may have none yet).
# Without root or apt-get it names the packages to install by hand and fails.
#
#   scripts/apt-install.sh CALLER PACKAGE...     (CALLER prefixes its messages)
set -euo pipefail
caller=$1
shift
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "$caller: missing Debian's $*; install it by hand (sudo apt-get install $*)" >&2
  exit 1
fi
echo "$caller: installing Debian's $* (one-off)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "$@" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$@" >/dev/null; }
