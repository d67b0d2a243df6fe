#!/usr/bin/env bash
# Single-node training targets: `swarm train` with the default manifests of
# the built-in models (llama: the llama-tiny preset), on all cores. Prints one
# Markdown section (see scripts/bench.sh): MNIST test accuracy, and gpt-char's
# and llama-tiny's validation loss next to a bigram model's on the same
# validation windows, with steps and times.
set -euo pipefail
source "$(dirname "$0")/lib/guard.sh"
bench_guard "$0" "$@"
cd "$(dirname "$0")/../.."
bin=bin/swarm
[ -x "$bin" ] || go build -o "$bin" ./cmd/swarm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$bin" run init --model mlp-mnist -o "$tmp/mlp.json" >/dev/null
"$bin" run init --model gpt-char -o "$tmp/gpt.json" >/dev/null
"$bin" run init --model llama-tiny -o "$tmp/llama.json" >/dev/null
"$bin" --log-level warn train --run "$tmp/mlp.json" --eval-every -1 --json > "$tmp/mlp.out"
"$bin" --log-level warn train --run "$tmp/gpt.json" --eval-every -1 --json > "$tmp/gpt.out"
"$bin" --log-level warn train --run "$tmp/llama.json" --eval-every -1 --json > "$tmp/llama.out"

python3 - "$tmp" <<'PY'
import json, sys
d = sys.argv[1]
mlp, gpt, llama = (json.load(open(f"{d}/{n}.out")) for n in ("mlp", "gpt", "llama"))
mm, gm, lm = (json.load(open(f"{d}/{n}.json")) for n in ("mlp", "gpt", "llama"))
def model(m):
    s = m["model"]
    if s["arch"] == "mlp-mnist":
        return "MLP " + "-".join(str(w) for w in [s["input"], *s["hidden"], s["classes"]])
    if s["arch"] == "llama":
        return (f'Llama {s["n_layer"]}×{s["n_embd"]}, {s["n_head"]} heads ({s["n_kv_head"]} key/value), '
                f'SwiGLU {s["ffn_hidden"]}, context {s["block_size"]}, vocab {s["vocab"]}')
    return f'GPT {s["n_layer"]}×{s["n_embd"]}, {s["n_head"]} heads, context {s["block_size"]}, vocab {s["vocab"]}'
def batch(m):
    t = m["training"]
    return f'{t["target_batch"]} (micro {t["batch_size"]})'
print("## Single-node training (`swarm train`)\n")
print("`swarm train --run R --json` on the default manifests of `swarm run init --model M` (native engine, all cores, every shard in one process). "
      "Time is wall-clock for the whole command's training loop; samples/s counts training steps only. "
      "The bigram baseline is a count model with add-k smoothing (k tuned on the tail of the training split), scored on exactly the validation windows the network is scored on.\n")
print("| model | steps | batch | samples | train s | samples/s | total s | result | target |")
print("|---|---|---|---|---|---|---|---|---|")
print(f'| mlp-mnist: {model(mm)} | {mlp["steps"]} | {batch(mm)} | {mlp["samples"]} | {mlp["train_seconds"]:.1f} | {mlp["samples_per_second"]:.0f} | {mlp["seconds"]:.1f} | '
      f'test accuracy **{100*mlp["test_accuracy"]:.2f}%** | ≥ 97.5% |')
print(f'| gpt-char: {model(gm)} | {gpt["steps"]} | {batch(gm)} | {gpt["samples"]} | {gpt["train_seconds"]:.1f} | {gpt["samples_per_second"]:.0f} | {gpt["seconds"]:.1f} | '
      f'val loss **{gpt["val_loss"]:.4f}** nats/char vs bigram {gpt["bigram_val_loss"]:.4f} | below bigram |')
print(f'| llama-tiny: {model(lm)} | {llama["steps"]} | {batch(lm)} | {llama["samples"]} | {llama["train_seconds"]:.1f} | {llama["samples_per_second"]:.0f} | {llama["seconds"]:.1f} | '
      f'val loss **{llama["val_loss"]:.4f}** nats/char vs bigram {llama["bigram_val_loss"]:.4f} | below bigram |')
PY
