package main

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/spec/run"
)

// Admission commands: `swarm run keygen` and `swarm run admit`, and the
// flags of `run init` that write a run's admission policy.

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:      "keygen",
		Usage:     "create a run operator's key (token runs) or a swarm key (private runs)",
		ArgsUsage: " ",
		Description: `Without --swarm-key: writes an Ed25519 operator key (mode 0600) and prints its
public key, which 'swarm run init --admission token --operator-key FILE' puts in the
manifest; 'swarm run admit' signs admission tokens with it. Keep it off the nodes.

With --swarm-key: writes a random 32-byte pre-shared key in libp2p's swarm key
format. Give the file to every node and bootstrap node of a private swarm
(--swarm-key FILE) and record it in the manifest with
'swarm run init --admission private --swarm-key FILE'.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "key file to write (never overwritten)"},
			&cli.BoolFlag{Name: "swarm-key", Usage: "write a private swarm's pre-shared key instead of an operator key"},
		},
		Action: func(c *cli.Context) error {
			out := c.String("output")
			if c.Bool("swarm-key") {
				key, err := node.GenerateSwarmKey(out)
				if err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "wrote swarm key %s (fingerprint %s)\n", out, run.SwarmKeyFingerprint(key))
				return nil
			}
			pub, err := run.GenerateOperatorKey(out)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "wrote operator key %s\npublic key: %s\n", out, hex.EncodeToString(pub))
			return nil
		},
	}
}

func admitCommand() *cli.Command {
	return &cli.Command{
		Name:      "admit",
		Usage:     "print an admission token for a peer of a token run",
		ArgsUsage: " ",
		Description: `Signs (run ID, peer, expiry) with the operator key. The volunteer passes the
token to 'swarm node --token' (or SWARM_TOKEN, or "token" in config.json). --peer is
the volunteer's peer ID ('swarm id' prints it) or * for a token anyone may use.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "run", Required: true, Usage: "run manifest (token admission)"},
			&cli.StringFlag{Name: "key", Required: true, Usage: "operator key file (swarm run keygen)"},
			&cli.StringFlag{Name: "peer", Required: true, Usage: "peer ID of the volunteer, or * for any peer"},
			&cli.DurationFlag{Name: "expires", Value: 30 * 24 * time.Hour, Usage: "how long the token is valid"},
		},
		Action: func(c *cli.Context) error {
			m, err := run.Load(c.String("run"))
			if err != nil {
				return err
			}
			if m.AdmissionMode() != run.AdmitToken {
				return fmt.Errorf("--run: the run's admission is %s, not token", m.AdmissionMode())
			}
			key, err := run.LoadOperatorKey(c.String("key"))
			if err != nil {
				return err
			}
			want, _ := run.ParseOperatorKey(m.Admission.OperatorKey)
			if !want.Equal(key.Public().(ed25519.PublicKey)) {
				return errors.New("--key is not the operator key the manifest names (admission.operator_key)")
			}
			p := c.String("peer")
			if p != run.AnyPeer {
				if _, err := peer.Decode(p); err != nil {
					return fmt.Errorf("--peer %q: not a peer ID (or *): %v", p, err)
				}
			}
			if c.Duration("expires") <= 0 {
				return fmt.Errorf("--expires %s: must be positive", c.Duration("expires"))
			}
			id, err := m.ID()
			if err != nil {
				return err
			}
			exp := time.Now().Add(c.Duration("expires"))
			tok, err := run.IssueToken(key, id.String(), p, exp)
			if err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, tok)
			return nil
		},
	}
}

// admissionFromFlags writes run init's --admission policy into m.
func admissionFromFlags(c *cli.Context, m *run.Manifest) error {
	mode := c.String("admission")
	switch mode {
	case "", run.AdmitOpen:
		if c.IsSet("operator-key") || c.IsSet("swarm-key") {
			return errors.New("--operator-key and --swarm-key go with --admission token or private")
		}
		return nil
	case run.AdmitToken:
		v := c.String("operator-key")
		if v == "" {
			return errors.New("--admission token needs --operator-key (a public key, or the key file from swarm run keygen)")
		}
		pub := v
		if _, err := run.ParseOperatorKey(v); err != nil {
			key, ferr := run.LoadOperatorKey(v)
			if ferr != nil {
				return fmt.Errorf("--operator-key %q: neither a public key nor a key file: %v", v, ferr)
			}
			pub = hex.EncodeToString(key.Public().(ed25519.PublicKey))
		}
		m.Admission = &run.AdmissionSpec{Mode: run.AdmitToken, OperatorKey: pub}
	case run.AdmitPrivate:
		path := c.String("swarm-key")
		if path == "" {
			return errors.New("--admission private needs --swarm-key FILE (swarm run keygen --swarm-key)")
		}
		key, err := node.LoadSwarmKey(path)
		if err != nil {
			return err
		}
		m.Admission = &run.AdmissionSpec{Mode: run.AdmitPrivate, SwarmKeySHA256: run.SwarmKeyFingerprint(key)}
	default:
		return fmt.Errorf("--admission %q: want open, token or private", mode)
	}
	return nil
}

// applyAdmission checks this node's credentials against the run's
// admission policy before it starts, so that a volunteer hears at once
// what is missing, and sets cfg.Admission.
func applyAdmission(cfg *node.Config, m *run.Manifest) error {
	id, err := m.ID()
	if err != nil {
		return err
	}
	switch m.AdmissionMode() {
	case run.AdmitOpen:
		return nil
	case run.AdmitPrivate:
		if cfg.SwarmKeyFile == "" {
			return errors.New("this run is private: pass the swarm key its operator gave you with --swarm-key FILE (or SWARM_SWARM_KEY)")
		}
		key, err := node.LoadSwarmKey(cfg.SwarmKeyFile)
		if err != nil {
			return err
		}
		if got := run.SwarmKeyFingerprint(key); got != m.Admission.SwarmKeySHA256 {
			return fmt.Errorf("--swarm-key %s is not this run's key (fingerprint %s, the manifest's admission.swarm_key_sha256 is %s)",
				cfg.SwarmKeyFile, got, m.Admission.SwarmKeySHA256)
		}
		cfg.Admission = node.Admission{Mode: run.AdmitPrivate}
		return nil
	}
	if cfg.Token == "" {
		return errors.New("this run admits only volunteers with a token: send the run's operator your peer ID (swarm id) and pass the token you get back with --token (or SWARM_TOKEN)")
	}
	if cfg.Home == "" {
		return errors.New("--token needs a home (the token names the home's peer ID)")
	}
	sk, err := node.LoadOrCreateIdentity(cfg.Home)
	if err != nil {
		return err
	}
	self, err := peer.IDFromPrivateKey(sk)
	if err != nil {
		return err
	}
	runID := id.String()
	if _, err := m.VerifyToken(cfg.Token, runID, self.String(), time.Now()); err != nil {
		help := "ask the run's operator for a new one (swarm run admit --peer " + self.String() + ")"
		if errors.Is(err, run.ErrTokenOtherRun) || errors.Is(err, run.ErrTokenForged) {
			help = "check that --run is the manifest the token was issued for"
		}
		return fmt.Errorf("--token: %v; %s", err, help)
	}
	cfg.Admission = node.Admission{Mode: run.AdmitToken, Token: strings.TrimSpace(cfg.Token),
		Verify: func(tok string, p peer.ID, now time.Time) (time.Time, error) {
			t, err := m.VerifyToken(tok, runID, p.String(), now)
			if err != nil {
				return time.Time{}, err
			}
			return t.Expires, nil
		}}
	return nil
}

// swarmKeyFlag and tokenFlag are the daemon flags of admission.
func swarmKeyFlag() cli.Flag {
	return &cli.StringFlag{Name: "swarm-key", Usage: "pre-shared key file of a private swarm (swarm run keygen --swarm-key); TCP only", EnvVars: []string{"SWARM_SWARM_KEY"}}
}

func tokenFlag() cli.Flag {
	return &cli.StringFlag{Name: "token", Usage: "admission token for a token run (from its operator: swarm run admit)", EnvVars: []string{"SWARM_TOKEN"}}
}

// readTokenValue lets --token name a file holding the token.
func readTokenValue(v string) string {
	if strings.HasPrefix(v, "swt1.") {
		return v
	}
	if b, err := os.ReadFile(v); err == nil {
		return strings.TrimSpace(string(b))
	}
	return v
}
