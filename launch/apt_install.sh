#!/usr/bin/env bash
# Install the Debian packages named as arguments when some are missing (idempotent).
# `make test` calls it with the packages of the real components the tests start (SLURM, MariaDB, ...).
# Without root or apt-get it installs nothing and says so; the tests that need a package then skip, naming it.
set -euo pipefail
missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "apt_install: not root or no apt-get; not installing ${missing[*]} (tests that need them will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
