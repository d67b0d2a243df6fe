package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/swarm-train/swarm/internal/atomicfile"
	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/node/ui"
)

const maxAPIBody = 64 << 10

// listenAPI binds the control API listener (loopback TCP or a unix socket)
// and loads or creates its token (apiauth.go).
func (n *Node) listenAPI() error {
	var err error
	if path, ok := strings.CutPrefix(n.cfg.API, "unix:"); ok {
		_ = os.Remove(path) // a stale socket of a dead daemon; we hold the home lock
		if n.apiLn, err = net.Listen("unix", path); err != nil {
			return fmt.Errorf("control API on %s: %w", n.cfg.API, err)
		}
		n.apiURL = "unix:" + path
	} else {
		if n.apiLn, err = net.Listen("tcp", n.cfg.API); err != nil {
			return fmt.Errorf("control API on %s: %w", n.cfg.API, err)
		}
		n.apiURL = "http://" + n.apiLn.Addr().String()
	}
	if n.apiToken, err = loadOrCreateAPIToken(n.cfg.Home); err != nil {
		return err
	}
	n.apiSrv = &http.Server{
		Handler:           n.guardAPI(n.apiHandler()),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          nil,
	}
	return nil
}

// writeAPIFile records where the API listens, once it is serving, so the
// CLI can find the daemon. It replaces a file left by a crashed daemon
// (the home lock says none is running).
func (n *Node) writeAPIFile() error {
	if n.cfg.Home == "" || n.apiLn == nil {
		return nil
	}
	path := filepath.Join(n.cfg.Home, APIFile)
	if err := atomicfile.WriteFile(path, []byte(n.apiURL+"\n"), 0o600); err != nil {
		return fmt.Errorf("API address: %w", err)
	}
	n.apiFile = path
	return nil
}

func (n *Node) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(api.PathStatus, get(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, n.Status())
	}))
	mux.HandleFunc(api.PathID, get(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, api.ID{PeerID: n.host.ID().String(), Addrs: strs(n.Addrs())})
	}))
	mux.HandleFunc(api.PathPeers, get(func(w http.ResponseWriter, r *http.Request) {
		var infos []peer.AddrInfo
		switch r.URL.Query().Get("run") {
		case "", "0", "false":
			for _, p := range n.host.Network().Peers() {
				infos = append(infos, n.host.Peerstore().PeerInfo(p))
			}
		case "1", "true":
			infos = n.RunPeers()
		default:
			writeError(w, http.StatusBadRequest, fmt.Errorf("query parameter run: %q is not true or false", r.URL.Query().Get("run")))
			return
		}
		out := make([]api.Peer, 0, len(infos))
		for _, ai := range infos {
			out = append(out, apiPeer(ai))
		}
		writeJSON(w, http.StatusOK, out)
	}))
	mux.HandleFunc(api.PathConnect, post(func(w http.ResponseWriter, r *http.Request) {
		var req api.ConnectRequest
		if err := decodeBody(w, r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		a, err := ma.NewMultiaddr(req.Addr)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("field addr: %q is not a multiaddr: %v", req.Addr, err))
			return
		}
		ai, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("field addr: %q must end in /p2p/<peer id>: %v", req.Addr, err))
			return
		}
		ctx, cancel := n.mergeCtx(r.Context())
		defer cancel()
		ctx, cancel2 := context.WithTimeout(ctx, dialTimeout)
		defer cancel2()
		if err := n.host.Connect(ctx, *ai); err != nil {
			writeError(w, http.StatusBadGateway, fmt.Errorf("connect %s: %v", ai.ID, err))
			return
		}
		n.RefreshRunPeers()
		writeJSON(w, http.StatusOK, apiPeer(n.host.Peerstore().PeerInfo(ai.ID)))
	}))
	mux.HandleFunc(api.PathRefresh, post(func(w http.ResponseWriter, r *http.Request) {
		n.RefreshRunPeers()
		writeJSON(w, http.StatusAccepted, struct{}{})
	}))
	mux.HandleFunc(api.PathPause, post(n.servePause(true)))
	mux.HandleFunc(api.PathResume, post(n.servePause(false)))
	mux.Handle(api.PathMetrics, promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{}))
	if n.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	// The dashboard (node/ui) samples the status once the node is serving.
	opts := ui.Options{OnError: func(err error) { n.log.Warn(err.Error()) }}
	if n.cfg.Home != "" {
		opts.File = filepath.Join(n.cfg.Home, "ui-history.json")
	}
	dash := ui.New(n, opts)
	n.goLoop(func(ctx context.Context) {
		select {
		case <-n.ready:
			dash.Run(ctx)
		case <-ctx.Done():
		}
	})
	mux.Handle(ui.Path, dash)
	mux.Handle("GET /{$}", http.RedirectHandler(ui.Path, http.StatusSeeOther))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s", r.URL.Path))
	})
	return mux
}

func get(h http.HandlerFunc) http.HandlerFunc { return method(http.MethodGet, h) }

func post(h http.HandlerFunc) http.HandlerFunc { return method(http.MethodPost, requireJSON(h)) }

func method(m string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != m && !(m == http.MethodGet && r.Method == http.MethodHead) {
			w.Header().Set("Allow", m)
			writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: use %s", r.Method, r.URL.Path, m))
			return
		}
		h(w, r)
	}
}

// decodeBody parses a JSON request body strictly: size-limited, no unknown
// fields, nothing after the object.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAPIBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty request body, want a JSON object")
		}
		return fmt.Errorf("request body: %v", err)
	}
	if dec.More() {
		return errors.New("request body: trailing data after the JSON object")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, api.Error{Error: err.Error()})
}
