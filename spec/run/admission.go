package run

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/swarm-train/swarm/internal/atomicfile"
)

// Admission modes: who may take part in a run.
const (
	// AdmitOpen admits anyone who completes the run hello (public runs).
	AdmitOpen = "open"
	// AdmitToken admits peers that present a token signed by the run's
	// operator key.
	AdmitToken = "token"
	// AdmitPrivate admits only peers holding the run's pre-shared swarm key:
	// outsiders cannot complete a connection at all.
	AdmitPrivate = "private"
)

// AdmissionSpec is the run's admission policy. A manifest without one is
// open; the run ID covers the policy, so peers of one run agree on it.
type AdmissionSpec struct {
	Mode string `json:"mode"`
	// OperatorKey (token mode) is the operator's Ed25519 public key, hex.
	OperatorKey string `json:"operator_key,omitempty"`
	// SwarmKeySHA256 (private mode) is the SHA-256 (hex) of the 32-byte
	// pre-shared key, so that a node with the wrong key file says so at start
	// instead of failing every connection.
	SwarmKeySHA256 string `json:"swarm_key_sha256,omitempty"`
}

// AdmissionMode returns the run's admission mode (open when unset).
func (m *Manifest) AdmissionMode() string {
	if m.Admission == nil {
		return AdmitOpen
	}
	return m.Admission.Mode
}

func (a *AdmissionSpec) validate() error {
	switch a.Mode {
	case AdmitOpen:
		if a.OperatorKey != "" || a.SwarmKeySHA256 != "" {
			return fieldErr("admission", "an open run has no operator_key or swarm_key_sha256")
		}
	case AdmitToken:
		if _, err := ParseOperatorKey(a.OperatorKey); err != nil {
			return fieldErr("admission.operator_key", "%v", err)
		}
		if a.SwarmKeySHA256 != "" {
			return fieldErr("admission.swarm_key_sha256", "only private runs have a swarm key")
		}
	case AdmitPrivate:
		if b, err := hex.DecodeString(a.SwarmKeySHA256); err != nil || len(b) != sha256.Size {
			return fieldErr("admission.swarm_key_sha256", "want 64 hex digits, got %q", a.SwarmKeySHA256)
		}
		if a.OperatorKey != "" {
			return fieldErr("admission.operator_key", "only token runs have an operator key")
		}
	default:
		return fieldErr("admission.mode", "unknown mode %q (want open, token or private)", a.Mode)
	}
	return nil
}

// ParseOperatorKey decodes an operator public key (64 hex digits).
func ParseOperatorKey(s string) (ed25519.PublicKey, error) {
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("want an Ed25519 public key as %d hex digits, got %d characters", 2*ed25519.PublicKeySize, len(s))
	}
	return ed25519.PublicKey(b), nil
}

// operatorKeyHeader starts an operator key file; the seed follows in hex.
const operatorKeyHeader = "swarm operator key v1"

// GenerateOperatorKey writes a new operator key to path (mode 0600; it
// refuses to overwrite a file) and returns its public key.
func GenerateOperatorKey(path string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	data := operatorKeyHeader + "\n" + hex.EncodeToString(priv.Seed()) + "\n"
	if err := atomicfile.WriteNew(path, []byte(data), 0o600); err != nil {
		return nil, fmt.Errorf("operator key: %w", err)
	}
	return pub, nil
}

// LoadOperatorKey reads an operator key file written by GenerateOperatorKey.
// A file readable by group or others is refused.
func LoadOperatorKey(path string) (ed25519.PrivateKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("operator key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("operator key %s: mode %04o lets others read it; chmod 600 it", path, st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("operator key: %w", err)
	}
	lines := strings.Fields(string(data))
	if len(lines) != 5 || strings.Join(lines[:4], " ") != operatorKeyHeader {
		return nil, fmt.Errorf("operator key %s: not a swarm operator key file", path)
	}
	seed, err := hex.DecodeString(lines[4])
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("operator key %s: the seed is not %d hex digits", path, 2*ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// AnyPeer in a token admits whichever peer presents it.
const AnyPeer = "*"

// MaxTokenLen bounds an admission token on the wire and in config.
const MaxTokenLen = 1024

// tokenPrefix starts every token's text form.
const tokenPrefix = "swt1."

// tokenDomain separates token signatures from any other use of the key.
const tokenDomain = "swarm admission token v1\n"

// Token is an operator's permission for one peer (or any) to take part in
// one run until Expires.
type Token struct {
	Run     string    `json:"run"`
	Peer    string    `json:"peer"`
	Expires time.Time `json:"-"`
	Exp     int64     `json:"exp"`
	sig     []byte
	payload []byte
}

// IssueToken signs a token for run and peer (a peer ID or AnyPeer) that
// expires at exp, and returns its text form.
func IssueToken(key ed25519.PrivateKey, runID, peerID string, exp time.Time) (string, error) {
	if runID == "" || peerID == "" {
		return "", errors.New("token: run and peer are required")
	}
	payload, err := json.Marshal(Token{Run: runID, Peer: peerID, Exp: exp.Unix()})
	if err != nil {
		return "", err
	}
	sig := ed25519.Sign(key, append([]byte(tokenDomain), payload...))
	enc := base64.RawURLEncoding
	s := tokenPrefix + enc.EncodeToString(payload) + "." + enc.EncodeToString(sig)
	if len(s) > MaxTokenLen {
		return "", fmt.Errorf("token: %d bytes, over the %d allowed (is the peer ID right?)", len(s), MaxTokenLen)
	}
	return s, nil
}

// Token errors; VerifyToken wraps them with the details.
var (
	ErrTokenMalformed = errors.New("malformed admission token")
	ErrTokenForged    = errors.New("admission token not signed by the run's operator")
	ErrTokenOtherRun  = errors.New("admission token is for another run")
	ErrTokenOtherPeer = errors.New("admission token is for another peer")
	ErrTokenExpired   = errors.New("admission token expired")
)

// ParseToken decodes a token's text form without verifying it.
func ParseToken(s string) (*Token, error) {
	s = strings.TrimSpace(s)
	if len(s) > MaxTokenLen {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrTokenMalformed, len(s), MaxTokenLen)
	}
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: does not start with %q", ErrTokenMalformed, tokenPrefix)
	}
	p64, s64, ok := strings.Cut(rest, ".")
	enc := base64.RawURLEncoding
	payload, err1 := enc.DecodeString(p64)
	sig, err2 := enc.DecodeString(s64)
	if !ok || err1 != nil || err2 != nil || len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: want swt1.<payload>.<signature> in base64url", ErrTokenMalformed)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var t Token
	if err := dec.Decode(&t); err != nil || t.Run == "" || t.Peer == "" || t.Exp <= 0 {
		return nil, fmt.Errorf("%w: payload needs run, peer and exp", ErrTokenMalformed)
	}
	t.Expires = time.Unix(t.Exp, 0)
	t.sig, t.payload = sig, payload
	return &t, nil
}

// VerifyToken checks that s is signed by the run's operator key, names
// runID and peerID (or any peer) and has not expired at now. It returns the
// token so that callers can tell when it expires.
func (m *Manifest) VerifyToken(s, runID, peerID string, now time.Time) (*Token, error) {
	if m.AdmissionMode() != AdmitToken {
		return nil, errors.New("the run does not use admission tokens")
	}
	key, err := ParseOperatorKey(m.Admission.OperatorKey)
	if err != nil {
		return nil, err
	}
	t, err := ParseToken(s)
	if err != nil {
		return nil, err
	}
	if !ed25519.Verify(key, append([]byte(tokenDomain), t.payload...), t.sig) {
		return nil, ErrTokenForged
	}
	if t.Run != runID {
		return nil, fmt.Errorf("%w: %s, not %s", ErrTokenOtherRun, t.Run, runID)
	}
	if t.Peer != AnyPeer && t.Peer != peerID {
		return nil, fmt.Errorf("%w: %s, not %s", ErrTokenOtherPeer, t.Peer, peerID)
	}
	if !now.Before(t.Expires) {
		return nil, fmt.Errorf("%w at %s", ErrTokenExpired, t.Expires.UTC().Format(time.RFC3339))
	}
	return t, nil
}

// SwarmKeyFingerprint is the hex SHA-256 of a pre-shared swarm key.
func SwarmKeyFingerprint(psk []byte) string {
	s := sha256.Sum256(psk)
	return hex.EncodeToString(s[:])
}
