#!/usr/bin/env bash
# Checks that imports point one way (README "Architecture"): cmd → node/training
# → node and swarm/... → averaging and the engines → leaf packages. A package
# listed on the left must not depend, directly or through others, on any
# package matching a pattern on the right. Run by make lint.
set -euo pipefail
mod=$(go list -m)
fail=0
# package (go list pattern) | forbidden dependency prefixes (space separated)
rules=(
	"./spec/...|swarm/ node engine gpu averaging cmd/"
	"./internal/bf16 ./internal/clock ./internal/guard ./internal/atomicfile ./internal/linkem ./internal/sparseq ./internal/kth|swarm/ node engine gpu averaging cmd/"
	"./engine/ ./engine/native/... ./engine/torch/...|swarm/ node gpu averaging cmd/ engine/choose"
	"./gpu|swarm/ node engine averaging cmd/"
	"./averaging|swarm/ node engine gpu cmd/"
	"./swarm/...|node cmd/"
	"./node ./node/api ./node/client ./node/ui|engine swarm/trainer swarm/train node/training cmd/"
)
for rule in "${rules[@]}"; do
	pkgs=${rule%%|*}
	forbidden=${rule#*|}
	# shellcheck disable=SC2086
	while read -r pkg deps; do
		for d in $deps; do
			rel=${d#"$mod"/}
			[[ $d == "$mod"/* ]] || continue
			for f in $forbidden; do
				if [[ $rel == "$f"* ]]; then
					echo "layers: ${pkg#"$mod"/} depends on $rel (it must not depend on $f...)"
					fail=1
				fi
			done
		done
	done < <(go list -f '{{.ImportPath}} {{join .Deps " "}}' $pkgs)
done
exit $fail
