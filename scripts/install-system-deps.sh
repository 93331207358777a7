#!/usr/bin/env bash
# Installs the programs ferry's tests and benchmark run against, from Debian's packages:
#   docker-registry (distribution 2.8), skopeo and time (GNU time: the benchmark's CPU and
#   peak-memory figures)                         from the machine's own suite;
#   crane and oras                                  from Debian sid (they need only libc6),
# through a private sources list and lists directory, never by editing the machine's apt sources;
#   qemu-user and libc6-, libgcc-s1-, libstdc++6-arm64-cross  from the machine's own suite: they run
# ferry's arm64 single executable here (`npm run package`, test/package.test.ts) as
# `qemu-aarch64 -L /usr/aarch64-linux-gnu` (the cross packages put the arm64 C/C++ runtime there).
# Needs root. Safe to run again: it installs only what is missing.
set -euo pipefail

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v openssl >/dev/null || need+=(openssl)
[ -x /usr/bin/time ] || need+=(time)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || need+=(libc6-arm64-cross)
[ -e /usr/aarch64-linux-gnu/lib/libgcc_s.so.1 ] || need+=(libgcc-s1-arm64-cross)
[ -e /usr/aarch64-linux-gnu/lib/libstdc++.so.6 ] || need+=(libstdc++6-arm64-cross)
sid=()
command -v crane >/dev/null || sid+=(crane)
command -v oras >/dev/null || sid+=(oras)
if [ ${#need[@]} -eq 0 ] && [ ${#sid[@]} -eq 0 ]; then
  echo "system packages: all present (docker-registry, skopeo, openssl, time, crane, oras, qemu-user and the arm64 runtime libraries)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ferry's tests need: ${need[*]} ${sid[*]}" >&2
  echo "Run as root:  sudo bash scripts/install-system-deps.sh" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if [ ${#need[@]} -gt 0 ]; then
  echo "installing from Debian: ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ${#sid[@]} -gt 0 ]; then
  echo "installing from Debian sid (private apt lists, machine sources untouched): ${sid[*]}"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  cat > "$work/sid.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  opts=(-o "Dir::Etc::SourceList=$work/sid.sources" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives" -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" update -qq
  (cd "$work" && apt-get "${opts[@]}" download "${sid[@]}")
  dpkg -i "$work"/*.deb >/dev/null
fi
echo "system packages: installed"
