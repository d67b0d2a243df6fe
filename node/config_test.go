package node

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/swarm-train/swarm/internal/atomicfile"
	"github.com/swarm-train/swarm/internal/testutil"
)

func TestDefaultConfigValidates(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Home = t.TempDir()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigRoundTrip(t *testing.T) {
	home := t.TempDir()
	cfg := DefaultConfig()
	cfg.RunName = "mnist"
	cfg.Bootstrap = []string{"/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWQE222tuGYxA9tAFSdSBEPEkPPJXaWNh6yus2JiKPrrxH"}
	if err := WriteConfig(home, cfg); err != nil {
		t.Fatal(err)
	}
	if err := WriteConfig(home, DefaultConfig()); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second WriteConfig: %v, want ErrExist", err)
	}
	got, exists, err := LoadConfig(home)
	if err != nil || !exists {
		t.Fatalf("load: exists=%v err=%v", exists, err)
	}
	if got.RunName != "mnist" || len(got.Bootstrap) != 1 || got.Home != home {
		t.Fatalf("loaded %+v", got)
	}
}

func TestConfigEmptyBootstrapAllowed(t *testing.T) {
	home := t.TempDir()
	write(t, filepath.Join(home, ConfigFile), `{"version": 1, "bootstrap": []}`)
	cfg, _, err := LoadConfig(home)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Bootstrap) != 0 || len(cfg.Listen) == 0 {
		t.Fatalf("got bootstrap %v listen %v", cfg.Bootstrap, cfg.Listen)
	}
}

// metrics_without_token is off unless a config file turns it on; a file
// written before the field existed still loads.
func TestConfigMetricsWithoutToken(t *testing.T) {
	for body, want := range map[string]bool{
		`{"version": 1, "api": "127.0.0.1:5001"}`:                                false,
		`{"version": 1, "api": "127.0.0.1:5001", "metrics_without_token": true}`: true,
	} {
		home := t.TempDir()
		write(t, filepath.Join(home, ConfigFile), body)
		cfg, _, err := LoadConfig(home)
		if err != nil || cfg.MetricsWithoutToken != want {
			t.Fatalf("%s: metrics_without_token %v, err %v; want %v", body, cfg.MetricsWithoutToken, err, want)
		}
	}
}

func TestBadConfigRejectedUntouched(t *testing.T) {
	cases := []struct{ name, body, want string }{
		{"syntax", `{"version": 1, "listen": [`, "line 1"},
		{"unknown field", `{"version": 1, "lsiten": []}`, `field "lsiten"`},
		{"wrong type", `{"version": 1, "conns_low": "many"}`, "field conns_low"},
		{"no version", `{"listen": []}`, "field version: missing"},
		{"future version", `{"version": 7}`, "field version: 7"},
		{"bad listen", `{"version": 1, "listen": ["/ip4/1.2.3/tcp/1"]}`, "field listen[0]"},
		{"bootstrap without id", `{"version": 1, "bootstrap": ["/ip4/127.0.0.1/tcp/1"]}`, "field bootstrap[0]"},
		{"public api", `{"version": 1, "api": "0.0.0.0:5001"}`, "field api"},
		{"dht mode", `{"version": 1, "dht_mode": "maybe"}`, "field dht_mode"},
		{"conns", `{"version": 1, "conns_low": 10, "conns_high": 5}`, "conns_low"},
		{"trailing", `{"version": 1} {}`, "after top-level value"},
		{"negative upload cap", `{"version": 1, "max_upload_mbps": -5}`, "field max_upload_mbps: -5"},
		{"tiny upload cap", `{"version": 1, "max_upload_mbps": 0.001}`, "field max_upload_mbps: 0.001 is below 0.1"},
		{"huge upload cap", `{"version": 1, "max_upload_mbps": 1e300}`, "field max_upload_mbps: 1e+300"},
		{"bad active hours", `{"version": 1, "active_hours": "22:00-25:00"}`, "field active_hours: "},
		{"bad cpu threshold", `{"version": 1, "pause_other_cpu_pct": 140}`, "field pause_other_cpu_pct: "},
		{"bad input period", `{"version": 1, "pause_on_input": "soon"}`, `field pause_on_input: "soon"`},
		{"short input period", `{"version": 1, "pause_on_input": "5s"}`, "between 1m and 24h"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			home := t.TempDir()
			path := filepath.Join(home, ConfigFile)
			write(t, path, tc.body)
			_, _, err := LoadConfig(home)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name the file and %q", err, tc.want)
			}
			if b, _ := os.ReadFile(path); string(b) != tc.body {
				t.Fatal("config file was modified")
			}
		})
	}
}

func TestIdentityCreatedOnceAndReused(t *testing.T) {
	home := t.TempDir()
	k1, err := LoadOrCreateIdentity(home)
	if err != nil {
		t.Fatal(err)
	}
	if k1.Type() != crypto.Ed25519 {
		t.Fatalf("key type %v", k1.Type())
	}
	fi, err := os.Stat(filepath.Join(home, IdentityFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity mode %v, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadOrCreateIdentity(home)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equals(k2) {
		t.Fatal("identity changed on second load")
	}
}

func TestCorruptIdentityRejectedUntouched(t *testing.T) {
	for name, body := range map[string][]byte{
		"garbage":   []byte("not a key at all"),
		"empty":     {},
		"truncated": truncatedKey(t),
	} {
		t.Run(name, func(t *testing.T) {
			home := t.TempDir()
			path := filepath.Join(home, IdentityFile)
			if err := os.WriteFile(path, body, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreateIdentity(home)
			if err == nil || !errors.Is(err, ErrCorruptFile) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %v: want ErrCorruptFile naming %s", err, path)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, body) {
				t.Fatal("identity file was modified")
			}
		})
	}
}

func truncatedKey(t *testing.T) []byte {
	sk, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := crypto.MarshalPrivateKey(sk)
	if err != nil {
		t.Fatal(err)
	}
	return b[:len(b)/2]
}

func write(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func FuzzDecodeConfig(f *testing.F) {
	f.Add([]byte(`{"version": 1}`))
	f.Add([]byte(`{"version": 1, "listen": ["/ip4/127.0.0.1/tcp/0"], "bootstrap": [], "api": "unix:/tmp/s"}`))
	f.Add([]byte(`{"version": 1, "conns_low": -1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := DefaultConfig()
		if err := decodeConfig(data, &cfg); err != nil {
			return
		}
		_ = cfg.Validate() // must not panic
	})
}

// TestHomeOnFullDisk: a node whose home is on a full disk cannot create
// its identity or config; the error names the file and says the disk is
// full, and nothing half-written is left.
func TestHomeOnFullDisk(t *testing.T) {
	home := testutil.SmallDisk(t, 64<<10)
	testutil.FillDisk(t, home)
	_, err := LoadOrCreateIdentity(home)
	if !errors.Is(err, atomicfile.ErrDiskFull) || !strings.Contains(err.Error(), filepath.Join(home, IdentityFile)) {
		t.Fatalf("identity on a full disk: %v", err)
	}
	err = WriteConfig(home, DefaultConfig())
	if !errors.Is(err, atomicfile.ErrDiskFull) || !strings.Contains(err.Error(), filepath.Join(home, ConfigFile)) {
		t.Fatalf("config on a full disk: %v", err)
	}
	t.Logf("full disk: %v", err)
	ents, _ := os.ReadDir(home)
	for _, e := range ents {
		if e.Name() != "filler" {
			t.Errorf("%s left in the full home", e.Name())
		}
	}
}
