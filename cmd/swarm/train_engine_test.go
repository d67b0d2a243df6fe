package main

import (
	"context"
	"encoding/json"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/swarm-train/swarm/engine/torch"
	"github.com/swarm-train/swarm/swarm/train"
)

// `swarm train --engine torch` trains on CPU PyTorch (the worker under
// /usr/bin/python3) and lands where the native engine does on the same
// manifest: the engines agree step by step. Skipped without PyTorch.
func TestTrainCommandTorchEngine(t *testing.T) {
	if _, err := torch.Probe(context.Background(), torch.DefaultPython); err != nil {
		t.Skipf("no PyTorch: %v", err)
	}
	path := filepath.Join(t.TempDir(), "run.json")
	mustCLI(t, "run", "init", "--model", "mlp-mnist", "--shards", "2", "--hidden", "64", "--batch", "32", "--target-batch", "64", "--steps", "20", "--lr", "0.003", "-o", path)
	results := map[string]train.Result{}
	for _, eng := range []string{"torch", "native"} {
		var res train.Result
		out := mustCLI(t, "--log-level", "warn", "train", "--run", path, "--engine", eng, "--cpu-threads", "1", "--eval-every", "-1", "--json")
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("--engine %s: %v\n%s", eng, err, out)
		}
		results[eng] = res
	}
	tr, nat := results["torch"], results["native"]
	if tr.Engine != "torch-cpu" || nat.Engine != "native" {
		t.Fatalf("engines %q and %q, want torch-cpu and native", tr.Engine, nat.Engine)
	}
	if tr.Steps != 20 || tr.TestAccuracy == nil || nat.TestAccuracy == nil {
		t.Fatalf("torch result %+v", tr)
	}
	if d := math.Abs(tr.TrainLoss - nat.TrainLoss); d > 1e-3*math.Max(1, nat.TrainLoss) {
		t.Errorf("last train loss: torch %.6f, native %.6f", tr.TrainLoss, nat.TrainLoss)
	}
	if d := math.Abs(*tr.TestAccuracy - *nat.TestAccuracy); d > 0.005 {
		t.Errorf("test accuracy: torch %.4f, native %.4f", *tr.TestAccuracy, *nat.TestAccuracy)
	}
}

// Without PyTorch (a python that does not exist), --engine torch falls back
// to the native engine with the reason in the log; an unknown engine is an
// error naming the choices.
func TestTrainCommandEngineFallback(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.json")
	mustCLI(t, "run", "init", "--model", "mlp-mnist", "--shards", "1", "--hidden", "16", "--batch", "16", "--target-batch", "16", "--steps", "2", "-o", path)
	out, logs, err := swarmCLI(t, "train", "--run", path, "--engine", "torch", "--python", filepath.Join(t.TempDir(), "no-python"), "--threads", "1", "--eval-every", "-1", "--json")
	if err != nil {
		t.Fatalf("fallback run: %v\n%s", err, logs)
	}
	var res train.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Engine != "native" {
		t.Fatalf("engine %q (%v), want the native fallback", res.Engine, err)
	}
	if !strings.Contains(logs, "torch engine unavailable") || !strings.Contains(logs, "no python interpreter") {
		t.Errorf("the log does not say why torch was not used:\n%s", logs)
	}
	if _, _, err := swarmCLI(t, "train", "--run", path, "--engine", "cuda"); err == nil || !strings.Contains(err.Error(), "want auto, native or torch") {
		t.Errorf("--engine cuda: %v", err)
	}
}
