package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-train/swarm/internal/testutil"
	"github.com/swarm-train/swarm/node/api"
)

// The swarm binary the process tests run: built once per test process, on
// first use, and removed by TestMain.
var (
	swarmBinOnce sync.Once
	swarmBinDir  string
	swarmBin     string
	swarmBinErr  error
	natBinDirs   []string // the nattest binary's (nat_e2e_test.go)
)

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range append(natBinDirs, swarmBinDir) {
		if d != "" {
			os.RemoveAll(d)
		}
	}
	os.Exit(code)
}

// buildSwarm returns the swarm binary, compiling it the first time.
func buildSwarm(t *testing.T) string {
	t.Helper()
	swarmBinOnce.Do(func() {
		if swarmBinDir, swarmBinErr = os.MkdirTemp("", "swarm-bin-"); swarmBinErr != nil {
			return
		}
		swarmBin = filepath.Join(swarmBinDir, "swarm")
		cmd := exec.Command("go", "build", "-o", swarmBin, ".")
		cmd.Stderr = os.Stderr
		swarmBinErr = cmd.Run()
	})
	if swarmBinErr != nil {
		t.Fatalf("build swarm: %v", swarmBinErr)
	}
	return swarmBin
}

// daemon is a swarm process started by a test.
type daemon struct {
	cmd    *exec.Cmd
	home   string
	mu     sync.Mutex
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan error
}

func startDaemon(t *testing.T, bin string, env []string, args ...string) *daemon {
	t.Helper()
	d := &daemon{done: make(chan error, 1)}
	for i, a := range args {
		if a == "--home" {
			d.home = args[i+1]
		}
	}
	d.cmd = exec.Command(bin, args...)
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Stdout = &lockedWriter{mu: &d.mu, w: &d.stdout}
	d.cmd.Stderr = &lockedWriter{mu: &d.mu, w: &d.stderr}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("%s stderr:\n%s", strings.Join(args, " "), d.output(true))
		}
	})
	return d
}

func (d *daemon) output(stderr bool) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if stderr {
		return d.stderr.String()
	}
	return d.stdout.String()
}

// stop sends SIGTERM and waits for a clean exit within 5 s.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	start := time.Now()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("daemon exited with %v after SIGTERM\n%s", err, d.output(true))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("daemon did not stop within 5 s of SIGTERM")
	}
	t.Logf("graceful shutdown took %v", time.Since(start).Round(time.Millisecond))
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// swarmCmd runs a short swarm command and returns stdout, stderr and the exit code.
func swarmCmd(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func status(t *testing.T, bin, home string) (*api.Status, error) {
	out, stderr, code := swarmCmd(t, bin, "status", "--json", "--home", home)
	if code != 0 {
		return nil, &exec.ExitError{Stderr: []byte(stderr)}
	}
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json is not one JSON object: %v\n%s", err, out)
	}
	return &st, nil
}

// TestDaemonProcesses drives swarm bootstrap, swarm node and swarm status
// as real processes on 127.0.0.1.
func TestDaemonProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs daemon processes")
	}
	bin := buildSwarm(t)
	dir := t.TempDir()
	listen := []string{"--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"}

	boot := startDaemon(t, bin, nil, append([]string{"--log-level", "debug", "bootstrap", "--home", filepath.Join(dir, "boot")}, listen...)...)
	var bootAddr string
	testutil.Eventually(t, 10*time.Second, testutil.Says("bootstrap printed no /tcp/ address"), func() bool {
		sc := bufio.NewScanner(strings.NewReader(boot.output(false)))
		for sc.Scan() {
			if a := strings.TrimSpace(sc.Text()); strings.HasPrefix(a, "/ip4/127.0.0.1/tcp/") && strings.Contains(a, "/p2p/") {
				bootAddr = a
				return true
			}
		}
		return false
	})

	// Three nodes of run r1 (one configured through SWARM_BOOTSTRAP), one of r2.
	var r1 []*daemon
	for i := 0; i < 3; i++ {
		home := filepath.Join(dir, "n"+string(rune('1'+i)))
		args := append([]string{"node", "--home", home, "--run-name", "r1"}, listen...)
		var env []string
		if i == 0 {
			env = []string{"SWARM_BOOTSTRAP=" + bootAddr}
		} else {
			args = append(args, "--bootstrap", bootAddr)
		}
		r1 = append(r1, startDaemon(t, bin, env, args...))
	}
	other := startDaemon(t, bin, nil, append([]string{"node", "--home", filepath.Join(dir, "x"), "--run-name", "r2", "--bootstrap", bootAddr}, listen...)...)

	ids := map[string]string{}
	testutil.Eventually(t, 15*time.Second, testutil.Says("r1 nodes did not find each other"), func() bool {
		for _, d := range r1 {
			st, err := status(t, bin, d.home)
			if err != nil || len(st.RunPeers) != 2 {
				return false
			}
			ids[d.home] = st.PeerID
		}
		return true
	})
	otherSt, err := status(t, bin, other.home)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range r1 {
		st, _ := status(t, bin, d.home)
		if st.RunID == otherSt.RunID || st.Reachability == "" || st.Schema != api.SchemaVersion {
			t.Fatalf("status of %s: %+v", d.home, st)
		}
		for _, p := range st.RunPeers {
			if p.PeerID == otherSt.PeerID {
				t.Fatal("peer of run r2 listed as a run peer of r1")
			}
			if len(p.Addrs) == 0 {
				t.Fatalf("run peer %s without addresses", p.PeerID)
			}
		}
	}
	if len(otherSt.RunPeers) != 0 {
		t.Fatalf("r2's only node lists run peers %v", otherSt.RunPeers)
	}
	out, _, code := swarmCmd(t, bin, "peers", "--run", "--home", r1[0].home)
	if code != 0 || len(strings.Split(strings.TrimSpace(out), "\n")) != 2 {
		t.Fatalf("swarm peers --run: code %d\n%s", code, out)
	}
	out, _, code = swarmCmd(t, bin, "status", "--home", r1[0].home)
	if code != 0 || !strings.Contains(out, "run peers") || !strings.Contains(out, ids[r1[0].home]) {
		t.Fatalf("human status: code %d\n%s", code, out)
	}
	// With --api the home's token is not sent: --api-token gives it.
	addr, _ := os.ReadFile(filepath.Join(r1[0].home, api.AddressFile))
	tok, _ := os.ReadFile(filepath.Join(r1[0].home, api.TokenFile))
	apiArgs := []string{"id", "--home", r1[0].home, "--api", strings.TrimSpace(string(addr))}
	if _, stderr, code := swarmCmd(t, bin, apiArgs...); code == 0 || !strings.Contains(stderr, "401") || strings.Contains(stderr, strings.TrimSpace(string(tok))) {
		t.Fatalf("swarm id --api without a token: code %d %q, want a 401 without the token", code, stderr)
	}
	out, _, code = swarmCmd(t, bin, append(apiArgs, "--api-token", strings.TrimSpace(string(tok)))...)
	if code != 0 || !strings.HasPrefix(out, ids[r1[0].home]+"\n") {
		t.Fatalf("swarm id --api --api-token: code %d %q", code, out)
	}
	bootSt, err := status(t, bin, boot.home)
	if err != nil || bootSt.Role != "bootstrap" || bootSt.DHTMode != "server" {
		t.Fatalf("bootstrap status %+v %v", bootSt, err)
	}

	// A second daemon on a home in use fails cleanly.
	_, stderr, code := swarmCmd(t, bin, "node", "--home", r1[1].home, "--listen", "/ip4/127.0.0.1/tcp/0")
	if code == 0 || !strings.Contains(stderr, "in use") {
		t.Fatalf("second daemon on %s: code %d, stderr %q", r1[1].home, code, stderr)
	}

	// Graceful shutdown removes the API file; a restart keeps the identity.
	d := r1[1]
	d.stop(t)
	if _, err := os.Stat(filepath.Join(d.home, api.AddressFile)); !os.IsNotExist(err) {
		t.Fatalf("API file left after shutdown: %v", err)
	}
	out, _, code = swarmCmd(t, bin, "id", "--home", d.home)
	if code != 0 || strings.TrimSpace(out) != ids[d.home] {
		t.Fatalf("offline swarm id: code %d %q, want %s", code, out, ids[d.home])
	}
	if _, stderr, code := swarmCmd(t, bin, "status", "--home", d.home); code == 0 || !strings.Contains(stderr, "no swarm daemon running") {
		t.Fatalf("status of a stopped daemon: code %d %q", code, stderr)
	}
	d2 := startDaemon(t, bin, nil, append([]string{"node", "--home", d.home, "--run-name", "r1", "--bootstrap", bootAddr}, listen...)...)
	testutil.Eventually(t, 15*time.Second, testutil.Says("restarted node did not rejoin"), func() bool {
		st, err := status(t, bin, d2.home)
		return err == nil && st.PeerID == ids[d.home] && len(st.RunPeers) == 2
	})
	for _, d := range append(r1[:1], r1[2], d2, other, boot) {
		d.stop(t)
	}
}

// TestDaemonBadInput checks that bad files and flags end the daemon with a
// clear message and a non-zero exit, leaving files untouched.
func TestDaemonBadInput(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildSwarm(t)
	dir := t.TempDir()
	local := []string{"--listen", "/ip4/127.0.0.1/tcp/0"}

	cfgHome := filepath.Join(dir, "badcfg")
	os.MkdirAll(cfgHome, 0o700)
	cfgPath := filepath.Join(cfgHome, "config.json")
	os.WriteFile(cfgPath, []byte(`{"version": 1, "listen": 5}`), 0o644)

	idHome := filepath.Join(dir, "badid")
	os.MkdirAll(idHome, 0o700)
	idPath := filepath.Join(idHome, "identity.key")
	os.WriteFile(idPath, []byte("garbage"), 0o600)

	runPath := filepath.Join(dir, "run.json")
	if _, stderr, code := swarmCmd(t, bin, "run", "init", "--model", "mlp-mnist", "-o", runPath); code != 0 {
		t.Fatalf("run init: %s", stderr)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"in-flight out of range", append([]string{"node", "--home", filepath.Join(dir, "h5"), "--run", runPath, "--in-flight", "65"}, local...), "--in-flight 65"},
		{"bulk with an upload cap", append([]string{"node", "--home", filepath.Join(dir, "h6"), "--run", runPath, "--bulk-listen", "127.0.0.1:0", "--max-upload-mbps", "20"}, local...), "--bulk-listen \"127.0.0.1:0\" with --max-upload-mbps 20"},
		{"bulk listen unusable", append([]string{"node", "--home", filepath.Join(dir, "h7"), "--run", runPath, "--bulk-listen", "127.0.0.1:99999"}, local...), "--bulk-listen \"127.0.0.1:99999\""},
		{"bulk listen without a port", append([]string{"node", "--home", filepath.Join(dir, "h8"), "--run", runPath, "--bulk-listen", "nonsense"}, local...), "--bulk-listen \"nonsense\": want HOST:PORT"},
		{"corrupt config", append([]string{"node", "--home", cfgHome}, local...), cfgPath},
		{"corrupt identity", append([]string{"node", "--home", idHome}, local...), idPath},
		{"unknown flag", []string{"node", "--home", filepath.Join(dir, "h1"), "--no-such-flag"}, "no-such-flag"},
		{"bad listen", []string{"node", "--home", filepath.Join(dir, "h2"), "--listen", "/ip4/999.1.1.1/tcp/1"}, "--listen"},
		{"bootstrap without id", append([]string{"node", "--home", filepath.Join(dir, "h3"), "--bootstrap", "/ip4/127.0.0.1/tcp/1"}, local...), "--bootstrap"},
		{"public api", append([]string{"node", "--home", filepath.Join(dir, "h4"), "--api-listen", "0.0.0.0:0"}, local...), "field api"},
		{"unknown command", []string{"nodee"}, "unknown command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := swarmCmd(t, bin, tc.args...)
			if code == 0 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("code %d, stderr %q: want non-zero and %q", code, stderr, tc.want)
			}
		})
	}
	if b, _ := os.ReadFile(cfgPath); string(b) != `{"version": 1, "listen": 5}` {
		t.Error("corrupt config was modified")
	}
	if b, _ := os.ReadFile(idPath); string(b) != "garbage" {
		t.Error("corrupt identity was modified")
	}
}
