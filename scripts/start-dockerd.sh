#!/usr/bin/env bash
# Start a local Docker engine for the real-engine tests when none answers, the safe way for a test box: no bridge
# network, no iptables or masquerading (every container runs with --network host, all traffic on 127.0.0.1).
# Needs root and Debian's docker.io. Prints one line and exits 0 when an engine answers, 1 with the reason otherwise.
set -uo pipefail
if docker info >/dev/null 2>&1; then
  echo "dockerd: already running ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "dockerd: not installed (apt-get install docker.io); the docker real-engine tests will skip" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "dockerd: must be started as root (sudo $0)" >&2
  exit 1
fi
log=${GPUOPS_DOCKERD_LOG:-/var/log/gpuops-dockerd.log}
setsid dockerd --bridge=none --iptables=false --ip-masq=false >"$log" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "dockerd: started ($(docker version --format '{{.Server.Version}}' 2>/dev/null)), log $log"
    exit 0
  fi
  sleep 0.5
done
echo "dockerd: did not answer within 30 s; last lines of $log:" >&2
tail -n 5 "$log" >&2
exit 1
