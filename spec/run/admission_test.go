package run

import (
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func tokenRun(t *testing.T) (*Manifest, string, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "operator.key")
	pub, err := GenerateOperatorKey(path)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMLPMNIST(2)
	m.Admission = &AdmissionSpec{Mode: AdmitToken, OperatorKey: hex.EncodeToString(pub)}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	id, _ := m.ID()
	return m, path, id.String()
}

func TestTokenVerify(t *testing.T) {
	m, keyPath, runID := tokenRun(t)
	key, err := LoadOperatorKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	exp := now.Add(time.Hour)
	mine, _ := IssueToken(key, runID, "12D3KooWpeerA", exp)
	anyone, _ := IssueToken(key, runID, AnyPeer, exp)
	other, _ := IssueToken(key, "bafkother", "12D3KooWpeerA", exp)
	_, _, _ = mine, anyone, other
	_, strangerPath, _ := tokenRun(t)
	stranger, _ := LoadOperatorKey(strangerPath)
	forged, _ := IssueToken(stranger, runID, "12D3KooWpeerA", exp)
	// A valid token with its payload swapped for another peer's.
	parts := strings.Split(mine, ".")
	swapped := tokenPrefix + strings.Split(anyone, ".")[1] + "." + parts[2]

	cases := []struct {
		name, tok, peer string
		at              time.Time
		want            error
	}{
		{"own token", mine, "12D3KooWpeerA", now, nil},
		{"any-peer token", anyone, "12D3KooWpeerB", now, nil},
		{"someone else's token", mine, "12D3KooWpeerB", now, ErrTokenOtherPeer},
		{"another run", other, "12D3KooWpeerA", now, ErrTokenOtherRun},
		{"expired", mine, "12D3KooWpeerA", exp, ErrTokenExpired},
		{"stranger's key", forged, "12D3KooWpeerA", now, ErrTokenForged},
		{"payload swapped", swapped, "12D3KooWpeerA", now, ErrTokenForged},
		{"garbage", "swt1.x.y", "12D3KooWpeerA", now, ErrTokenMalformed},
		{"empty", "", "12D3KooWpeerA", now, ErrTokenMalformed},
		{"huge", tokenPrefix + strings.Repeat("A", 4096), "12D3KooWpeerA", now, ErrTokenMalformed},
	}
	for _, c := range cases {
		tk, err := m.VerifyToken(c.tok, runID, c.peer, c.at)
		if c.want == nil {
			if err != nil || !tk.Expires.Equal(exp) {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func TestAdmissionChangesRunID(t *testing.T) {
	open := NewMLPMNIST(2)
	a, _ := open.ID()
	m, _, _ := tokenRun(t)
	b, _ := m.ID()
	if a.Equals(b) {
		t.Fatal("the admission policy is not part of the run ID")
	}
	open.Admission = &AdmissionSpec{Mode: AdmitOpen}
	if err := open.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestAdmissionValidateNamesField(t *testing.T) {
	cases := []struct {
		spec  AdmissionSpec
		field string
	}{
		{AdmissionSpec{Mode: "invite"}, "admission.mode"},
		{AdmissionSpec{Mode: AdmitToken}, "admission.operator_key"},
		{AdmissionSpec{Mode: AdmitToken, OperatorKey: "abcd"}, "admission.operator_key"},
		{AdmissionSpec{Mode: AdmitPrivate, SwarmKeySHA256: "00"}, "admission.swarm_key_sha256"},
		{AdmissionSpec{Mode: AdmitOpen, SwarmKeySHA256: strings.Repeat("0", 64)}, "admission"},
	}
	for _, c := range cases {
		m := NewMLPMNIST(2)
		m.Admission = &c.spec
		var fe *FieldError
		if err := m.Validate(); !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%+v: got %v, want field %s", c.spec, err, c.field)
		}
	}
}

func TestOperatorKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "operator.key")
	if _, err := GenerateOperatorKey(path); err != nil {
		t.Fatal(err)
	}
	if _, err := GenerateOperatorKey(path); err == nil {
		t.Fatal("overwrote an existing key")
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOperatorKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key: %v", err)
	}
}

func FuzzParseToken(f *testing.F) {
	f.Add("swt1.eyJydW4iOiJ4IiwicGVlciI6IioiLCJleHAiOjF9." + strings.Repeat("A", 86))
	f.Add("swt1..")
	f.Fuzz(func(t *testing.T, s string) {
		tk, err := ParseToken(s)
		if err == nil && (tk.Run == "" || tk.Peer == "" || len(tk.sig) != 64) {
			t.Fatalf("accepted %q as %+v", s, tk)
		}
	})
}
