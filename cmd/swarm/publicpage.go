package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/ui"
	"github.com/swarm-train/swarm/spec/run"
)

// publicPage is a bootstrap node's public swarm page (--dashboard): its
// listener is bound before the node starts, so a taken port fails at once.
type publicPage struct {
	ln     net.Listener
	runs   []*run.Manifest
	srv    *http.Server
	cancel context.CancelFunc
}

func listenPublicPage(c *cli.Context) (*publicPage, error) {
	p := &publicPage{}
	addr := c.String("dashboard")
	if addr == "" {
		if len(c.StringSlice("dashboard-run")) > 0 {
			return nil, errors.New("--dashboard-run: needs --dashboard ADDR for the page")
		}
		return p, nil
	}
	for _, path := range c.StringSlice("dashboard-run") {
		m, err := run.Load(path)
		if err != nil {
			return nil, fmt.Errorf("--dashboard-run: %w", err)
		}
		p.runs = append(p.runs, m)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("--dashboard %q: want HOST:PORT such as 0.0.0.0:8080: %v", addr, err)
	}
	var err error
	if p.ln, err = net.Listen("tcp", addr); err != nil {
		return nil, fmt.Errorf("--dashboard: %w", err)
	}
	return p, nil
}

// serve starts the page once the node is up.
func (p *publicPage) serve(n *node.Node, log *slog.Logger) {
	if p.ln == nil {
		return
	}
	page := ui.NewPublic(n, p.runs, 0)
	var ctx context.Context
	ctx, p.cancel = context.WithCancel(context.Background())
	go page.Run(ctx)
	p.srv = &http.Server{Handler: page, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
	go func() {
		if err := p.srv.Serve(p.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("public swarm page stopped", "err", err)
		}
	}()
	log.Info("public swarm page", "url", "http://"+p.ln.Addr().String()+"/", "runs", len(p.runs))
}

func (p *publicPage) close() {
	if p.cancel != nil {
		p.cancel()
	}
	if p.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = p.srv.Shutdown(ctx)
	} else if p.ln != nil {
		p.ln.Close()
	}
}
