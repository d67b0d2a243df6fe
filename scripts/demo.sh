#!/usr/bin/env bash
# make demo: a local swarm on 127.0.0.1 that trains a real model. One bootstrap
# node and four volunteer nodes, each its own process with its own home under
# demo-home/, train mlp-mnist split into 2 shards: the nodes choose their shards,
# pass micro-batches through the pipeline, average gradients with the other
# holders of their shard every collaborative epoch, and at the end evaluate the
# model on the MNIST test set. Progress (epoch, loss, samples/s, peers per
# shard) is printed every few seconds; the last line is the test accuracy.
# One to two minutes on two cores.
#
#   DEMO_NODES=6 make demo          # more volunteers
#   DEMO_STEPS=200 make demo        # a shorter run
#   DEMO_HIDDEN=256,256 make demo   # a smaller model (about a minute)
#   DEMO_AVERAGING=local make demo  # local-steps (DiLoCo) mode
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./bin/swarm
[ -x "$bin" ] || { echo "demo: $bin missing; run 'make build' first" >&2; exit 1; }
exec "$bin" demo --dir "${DEMO_HOME:-demo-home}" "$@"
