package statesync

import (
	"errors"
	"fmt"
	"math"
)

// ErrHeldOut marks a state that a single donor offers and that does worse
// on held-out data than the node's own by more than the run's margin.
var ErrHeldOut = errors.New("statesync: the offered state does worse on held-out data")

// HeldOut is the check of a state that no two donors offer alike: its loss
// on held-out data (offered) may exceed the loss of the node's own state on
// the same data (own) by at most margin (nats). A donor that serves finite
// garbage with correct chunk hashes fails it; an honest donor ahead of the
// node does as well as the node or better. A loss that is not finite fails.
func HeldOut(own, offered, margin float64) error {
	if math.IsNaN(offered) || math.IsInf(offered, 0) || math.IsNaN(own) || math.IsInf(own, 0) {
		return fmt.Errorf("%w: held-out loss %g against this node's %g", ErrHeldOut, offered, own)
	}
	if offered > own+margin {
		return fmt.Errorf("%w: held-out loss %.4f against this node's %.4f, more than the margin of %g worse", ErrHeldOut, offered, own, margin)
	}
	return nil
}
