package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// swarm demo --model llama-tiny trains a character Llama in a local swarm
// of real processes (2 nodes, 2 shards), reports its validation loss and
// perplexity, and ends with text drawn from the shards the nodes
// checkpointed when they stopped.
func TestDemoLlamaTiny(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a bootstrap and two nodes")
	}
	bin := buildSwarm(t)
	dir := filepath.Join(t.TempDir(), "demo")
	cmd := exec.Command(bin, "demo", "--model", "llama-tiny", "--nodes", "2", "--shards", "2", "--steps", "12",
		"--dir", dir, "--interval", "500ms", "--timeout", "5m", "--prompt", "The light ", "--sample-tokens", "40")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("swarm demo: %v\n%s", err, out)
	}
	s := string(out)
	if !strings.Contains(s, "llama-tiny, 2 shards, 12 steps") || !strings.Contains(s, "validation loss") || !strings.Contains(s, "perplexity") {
		t.Fatalf("no validation loss and perplexity at the end:\n%s", s)
	}
	_, after, ok := strings.Cut(s, "demo: a sample")
	if !ok {
		t.Fatalf("no sample at the end:\n%s", s)
	}
	_, text, _ := strings.Cut(after, "\n")
	if !strings.HasPrefix(text, "The light ") || len([]rune(strings.TrimSpace(text))) < len("The light")+20 {
		t.Fatalf("sample %q: want the prompt and 40 characters after it", text)
	}
}

// Flags that do not fit the model are refused before anything starts.
func TestDemoRefusesFlags(t *testing.T) {
	bin := buildSwarm(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--model", "llama-tiny", "--hidden", "64"}, "--hidden is for mlp-mnist"},
		{[]string{"--model", "resnet"}, `--model "resnet"`},
		{[]string{"--corpus", "x.txt"}, "--corpus is for text models"},
		{[]string{"--model", "llama-tiny", "--shards", "9"}, "--shards 9"},
		{[]string{"--model", "gpt-char", "--corpus", filepath.Join(t.TempDir(), "missing.txt")}, "--corpus"},
	} {
		out, err := exec.Command(bin, append([]string{"demo", "--dir", filepath.Join(t.TempDir(), "d")}, tc.args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("demo %v: %v, %q; want an error naming %q", tc.args, err, out, tc.want)
		}
	}
}
