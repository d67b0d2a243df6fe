package node

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/internal/testutil"
)

func TestHelloRoundTrip(t *testing.T) {
	c := RunIDFromName("default")
	if c != RunIDFromName("default") || c == RunIDFromName("other") {
		t.Fatal("run ID is not a function of the name")
	}
	for _, h := range []hello{
		{Run: c},
		{Run: c, Token: "swt1.abc.def"},
		{Run: c, Refused: true, Reason: "token-expired: admission token expired at 2026-01-01T00:00:00Z"},
	} {
		var buf bytes.Buffer
		if err := writeHello(&buf, h); err != nil {
			t.Fatal(err)
		}
		got, err := readHello(&buf)
		if err != nil || !got.Run.Equals(c) || got.Token != h.Token || got.Refused != h.Refused || got.Reason != h.Reason {
			t.Fatalf("got %+v, %v; want %+v", got, err, h)
		}
	}
	if err := writeHello(io.Discard, hello{Run: c, Token: strings.Repeat("x", maxTokenLen+1)}); err == nil {
		t.Fatal("wrote an oversized token")
	}
}

func TestReadHelloRejects(t *testing.T) {
	good := RunIDFromName("x").Bytes()
	id := append([]byte{byte(len(good))}, good...)
	for name, b := range map[string][]byte{
		"empty":          {},
		"zero len":       {0},
		"huge len":       {0xff, 0xff, 0xff, 0xff, 0x0f},
		"short body":     append([]byte{byte(len(good))}, good[:5]...),
		"not a cid":      {4, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0},
		"trailing":       append(append([]byte{byte(len(good) + 2)}, good...), 1, 2, 0, 0, 0),
		"no token":       id,
		"huge token":     append(append([]byte{}, id...), 0x81, 0x08), // 1025 bytes declared
		"bad verdict":    append(append([]byte{}, id...), 0, 7, 0),
		"no reason":      append(append([]byte{}, id...), 0, 0),
		"reason too big": append(append([]byte{}, id...), 0, 1, 0x81, 0x02),
	} {
		if _, err := readHello(bytes.NewReader(b)); !errors.Is(err, errBadHello) {
			t.Errorf("%s: got %v", name, err)
		}
	}
}

// A clean close before a message is io.EOF under errBadHello, so that the
// listener can tell a dialer that left after its answer from one that sent
// garbage.
func TestReadHelloEOF(t *testing.T) {
	if _, err := readHello(bytes.NewReader(nil)); !errors.Is(err, errBadHello) || !errors.Is(err, io.EOF) {
		t.Fatalf("empty stream: %v", err)
	}
	if _, err := readHello(bytes.NewReader([]byte{0xff})); errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated length read as a clean close: %v", err)
	}
}

func FuzzReadHello(f *testing.F) {
	var buf bytes.Buffer
	_ = writeHello(&buf, hello{Run: RunIDFromName("default"), Token: "swt1.a.b", Refused: true, Reason: "r"})
	f.Add(buf.Bytes())
	f.Add([]byte{0})
	f.Add([]byte{0x80, 0x80, 0x80})
	f.Add([]byte{3, 1, 0x55, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := readHello(bytes.NewReader(data))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := writeHello(&out, h); err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(data, out.Bytes()) {
			t.Fatalf("re-encoding %x differs from input %x", out.Bytes(), data)
		}
	})
}

// A peer that speaks garbage on the run handshake is disconnected, and the
// node goes on serving well-behaved peers.
func TestGarbageHelloDisconnects(t *testing.T) {
	_, bootAddr := startBootstrap(t)
	a := startNode(t, testConfig("run", bootAddr))
	b := startNode(t, testConfig("run", bootAddr))
	// The garbage speaker is a bare host: it does not redial on its own.
	evil := testutil.Host(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := evil.Connect(ctx, peer.AddrInfo{ID: a.Host().ID(), Addrs: a.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	s, err := evil.NewStream(ctx, a.Host().ID(), HelloProtocol)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = s.Write([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	_ = s.CloseWrite()
	testutil.Eventually(t, 5*time.Second, func() string { return "garbage peer still connected" }, func() bool {
		return a.Host().Network().Connectedness(evil.ID()) != network.Connected
	})
	testutil.Eventually(t, 10*time.Second, func() string { return "a and b did not find each other" }, func() bool {
		return runPeerSet(a)[b.Host().ID()] && runPeerSet(b)[a.Host().ID()]
	})
	if runPeerSet(a)[evil.ID()] {
		t.Fatal("garbage peer listed as a run peer")
	}
}
