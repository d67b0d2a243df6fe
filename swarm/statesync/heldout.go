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

// ContradictGap is how much worse on held-out data (nats) than the state
// donors agree on a state offered alone at the same or a later epoch may do
// before it is shown to be a lie: holders of a shard step together, so an
// honest holder's state one epoch on does about as well as the agreed one
// (a drifted holder's differs by far less than a nat).
const ContradictGap = 1.0

// Contradicts reports, with the evidence, whether a state a single donor
// offered (held-out loss offered), at an epoch no earlier than the state
// donors agreed on (agreed), is shown to be a lie.
func Contradicts(agreed, offered float64) error {
	if math.IsNaN(offered) || math.IsInf(offered, 0) || offered > agreed+ContradictGap {
		return fmt.Errorf("held-out loss %.4f against %.4f of the state other donors agree on, more than %g worse", offered, agreed, ContradictGap)
	}
	return nil
}
