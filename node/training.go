package node

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/swarm-train/swarm/swarm/trainer"
)

// Training is the Service that makes a node train: it builds a
// swarm/trainer.Trainer on the node's host, feeds it the node's run peers
// and DHT provider records, and adds its view of the run to the status API
// under services.training.
type Training struct {
	// Config is the trainer's configuration; Host, RunPeers, Announce,
	// FindProviders and Logger are filled in from the node.
	Config trainer.Config

	mu   sync.Mutex
	t    *trainer.Trainer
	done chan struct{}
	err  error
}

// Start implements Service.
func (s *Training) Start(ctx context.Context, n *Node) error {
	if n.runs == nil {
		return errors.New("training: a bootstrap node does not train")
	}
	if id, err := s.Config.Manifest.ID(); err != nil || !id.Equals(n.RunID()) {
		return fmt.Errorf("training: the manifest's run ID does not match the node's run %s", n.RunID())
	}
	cfg := s.Config
	cfg.Host = n.Host()
	cfg.RunPeers = func() []peer.ID {
		ais := n.RunPeers()
		out := make([]peer.ID, len(ais))
		for i, ai := range ais {
			out[i] = ai.ID
		}
		return out
	}
	cfg.Announce = n.Announce
	cfg.FindProviders = n.FindProviders
	if cfg.Logger == nil {
		cfg.Logger = n.Logger()
	}
	t, err := trainer.New(cfg)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.t, s.done = t, make(chan struct{})
	s.mu.Unlock()
	n.AddStatus("training", func() any { return t.Status() })
	go func() {
		defer close(s.done)
		if err := t.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			n.Logger().Error("training stopped", "err", err)
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
		}
	}()
	return nil
}

// Trainer returns the running trainer (nil before Start).
func (s *Training) Trainer() *trainer.Trainer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.t
}

// Close implements Service.
func (s *Training) Close() error {
	s.mu.Lock()
	t, done := s.t, s.done
	s.mu.Unlock()
	if t == nil {
		return nil
	}
	err := t.Close()
	<-done
	return err
}
