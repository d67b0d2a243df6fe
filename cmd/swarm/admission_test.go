package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/spec/run"
)

// An operator creates a token run and admits a volunteer; the volunteer's
// node refuses to start with a token that is missing, expired or not its
// own, naming what is wrong and what to do.
func TestTokenRunCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the swarm binary; skipped with -short")
	}
	bin := buildSwarm(t)
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "operator.key")
	out := mustCLI(t, "run", "keygen", "-o", keyPath)
	pub := strings.TrimSpace(out[strings.Index(out, "public key: ")+len("public key: "):])
	manifest := filepath.Join(dir, "run.json")
	mustCLI(t, "run", "init", "--model", "mlp-mnist", "--shards", "2", "--admission", "token", "--operator-key", keyPath, "-o", manifest)
	m, err := run.Load(manifest)
	if err != nil {
		t.Fatal(err)
	}
	if m.AdmissionMode() != run.AdmitToken || m.Admission.OperatorKey != pub {
		t.Fatalf("manifest admission %+v, want token with %s", m.Admission, pub)
	}

	home := filepath.Join(dir, "volunteer")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	sk, err := node.LoadOrCreateIdentity(home)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := peer.IDFromPrivateKey(sk)
	tok := strings.TrimSpace(mustCLI(t, "run", "admit", "--run", manifest, "--key", keyPath, "--peer", self.String(), "--expires", "1h"))
	id, _ := m.ID()
	if tk, err := m.VerifyToken(tok, id.String(), self.String(), time.Now()); err != nil || tk.Expires.Before(time.Now().Add(59*time.Minute)) {
		t.Fatalf("issued token: %v", err)
	}

	// A key that is not the manifest's operator key signs nothing.
	other := filepath.Join(dir, "other.key")
	mustCLI(t, "run", "keygen", "-o", other)
	if _, _, err := swarmCLI(t, "run", "admit", "--run", manifest, "--key", other, "--peer", "*"); err == nil || !strings.Contains(err.Error(), "operator_key") {
		t.Fatalf("admit with a stranger's key: %v", err)
	}
	if _, _, err := swarmCLI(t, "run", "admit", "--run", manifest, "--key", keyPath, "--peer", "alice"); err == nil || !strings.Contains(err.Error(), "not a peer ID") {
		t.Fatalf("admit a malformed peer ID: %v", err)
	}

	key, _ := run.LoadOperatorKey(keyPath)
	expired, _ := run.IssueToken(key, id.String(), self.String(), time.Now().Add(-time.Minute))
	someoneElse, _ := run.IssueToken(key, id.String(), "12D3KooWNvSZnPi3RrhrTwEY4LuuBeB6K6facKUCJcyWG1aoDd2p", time.Now().Add(time.Hour))
	for _, c := range []struct {
		name  string
		extra []string
		want  []string
	}{
		{"no token", nil, []string{"admits only volunteers with a token", "--token"}},
		{"expired", []string{"--token", expired}, []string{"expired", "swarm run admit --peer " + self.String()}},
		{"someone else's", []string{"--token", someoneElse}, []string{"another peer"}},
	} {
		args := append([]string{"node", "--home", home, "--run", manifest, "--listen", "/ip4/127.0.0.1/tcp/0",
			"--bootstrap", "none", "--api-listen", "127.0.0.1:0"}, c.extra...)
		_, stderr, code := swarmCmd(t, bin, args...)
		for _, w := range c.want {
			if code == 0 || !strings.Contains(stderr, w) {
				t.Errorf("%s: node start: exit %d, %q; want it to say %q", c.name, code, stderr, w)
			}
		}
	}
}

// A private run records its swarm key's fingerprint; a node with another
// key, or none, stops at start and says so.
func TestPrivateRunCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the swarm binary; skipped with -short")
	}
	bin := buildSwarm(t)
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "swarm.key")
	mustCLI(t, "run", "keygen", "--swarm-key", "-o", keyPath)
	manifest := filepath.Join(dir, "run.json")
	mustCLI(t, "run", "init", "--model", "mlp-mnist", "--admission", "private", "--swarm-key", keyPath, "-o", manifest)
	m, err := run.Load(manifest)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := node.LoadSwarmKey(keyPath)
	if m.AdmissionMode() != run.AdmitPrivate || m.Admission.SwarmKeySHA256 != run.SwarmKeyFingerprint(key) {
		t.Fatalf("manifest admission %+v", m.Admission)
	}
	wrong := filepath.Join(dir, "wrong.key")
	mustCLI(t, "run", "keygen", "--swarm-key", "-o", wrong)
	base := []string{"node", "--home", filepath.Join(dir, "home"), "--run", manifest, "--listen", "/ip4/127.0.0.1/tcp/0",
		"--bootstrap", "none", "--api-listen", "127.0.0.1:0"}
	if _, stderr, code := swarmCmd(t, bin, base...); code == 0 || !strings.Contains(stderr, "--swarm-key") {
		t.Errorf("no key: exit %d, %s", code, stderr)
	}
	if _, stderr, code := swarmCmd(t, bin, append(base, "--swarm-key", wrong)...); code == 0 || !strings.Contains(stderr, "not this run's key") {
		t.Errorf("wrong key: exit %d, %s", code, stderr)
	}
	if _, _, err := swarmCLI(t, "run", "init", "--model", "mlp-mnist", "--admission", "token", "-o", filepath.Join(dir, "x.json")); err == nil || !strings.Contains(err.Error(), "--operator-key") {
		t.Errorf("token run without a key: %v", err)
	}
}
