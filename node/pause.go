package node

import (
	"errors"
	"net/http"

	"github.com/swarm-train/swarm/gpu"
	"github.com/swarm-train/swarm/node/api"
)

// ErrNotTraining is the answer to pause and resume on a node that does not
// train (a bootstrap node, or swarm node --no-train).
var ErrNotTraining = errors.New("this node does not train (a bootstrap node, or --no-train): nothing to pause or resume")

// manualPauser is a service the volunteer can pause and resume by hand
// (the training service, node/training).
type manualPauser interface {
	SetManual(rule string, pause bool) (api.Pause, error)
}

// servePause answers POST /v1/pause (pause true) and /v1/resume: it sets
// or clears a pause rule of the training service. Unknown rules and rules
// that follow the node's settings are refused (400, 409) with the reason.
func (n *Node) servePause(pause bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req api.PauseRequest
		if err := decodeBody(w, r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		var svc manualPauser
		for _, s := range n.cfg.Services {
			if p, ok := s.(manualPauser); ok {
				svc = p
			}
		}
		if svc == nil {
			writeError(w, http.StatusConflict, ErrNotTraining)
			return
		}
		p, err := svc.SetManual(req.Rule, pause)
		switch {
		case errors.Is(err, gpu.ErrUnknownRule):
			writeError(w, http.StatusBadRequest, err)
		case err != nil:
			writeError(w, http.StatusConflict, err)
		default:
			writeJSON(w, http.StatusOK, p)
		}
	}
}
