package epochs

import (
	"slices"
	"testing"

	"github.com/swarm-train/swarm/swarm/progress"
)

func content(b byte) [32]byte { return [32]byte{b} }

func offer(peer string, epoch uint64, c byte) StateOffer {
	return StateOffer{Peer: peer, Epoch: epoch, Content: content(c)}
}

func own(epoch uint64, c byte) *StateOffer { o := offer("", epoch, c); return &o }

// TestResume: which state a node that takes a shard starts from.
func TestResume(t *testing.T) {
	cases := []struct {
		name   string
		in     ResumeInput
		from   ResumeFrom
		epoch  uint64
		donors []string
	}{
		{name: "fresh run: nobody had the shard", in: ResumeInput{MaxEpoch: 600}, from: FromInit},
		{name: "live holders, no checkpoint", in: ResumeInput{Live: true, LiveEpoch: 40, MaxEpoch: 600}, from: FromSync},
		{name: "live holders ahead of own checkpoint", in: ResumeInput{Own: own(30, 1), Live: true, LiveEpoch: 40, MaxEpoch: 600}, from: FromSync},
		{name: "live holders level with own checkpoint", in: ResumeInput{Own: own(40, 1), Live: true, LiveEpoch: 40, MaxEpoch: 600}, from: FromOwn, epoch: 40},
		{name: "own checkpoint ahead of the live holders", in: ResumeInput{Own: own(41, 1), Live: true, LiveEpoch: 40, MaxEpoch: 600}, from: FromOwn, epoch: 41},
		{name: "own checkpoint past the run's end is no checkpoint", in: ResumeInput{Own: own(900, 1), Live: true, LiveEpoch: 40, MaxEpoch: 600}, from: FromSync},
		{name: "whole swarm restart: own and a mate's alike", in: ResumeInput{Own: own(200, 1), Offers: []StateOffer{offer("b", 200, 1)}, MaxEpoch: 600},
			from: FromOwn, epoch: 200},
		{name: "whole swarm restart: mate one epoch newer", in: ResumeInput{Own: own(200, 1), Offers: []StateOffer{offer("b", 201, 2)}, MaxEpoch: 600},
			from: FromPeers, epoch: 201, donors: []string{"b"}},
		{name: "own periodic checkpoint far behind a lone mate's: wait", in: ResumeInput{Own: own(150, 1), Offers: []StateOffer{offer("b", 200, 2)}, MaxEpoch: 600},
			from: FromWait},
		{name: "the same after waiting: own, not the lone far one", in: ResumeInput{Own: own(150, 1), Offers: []StateOffer{offer("b", 200, 2)}, MaxEpoch: 600, Settle: true},
			from: FromOwn, epoch: 150},
		{name: "two peers agree on a newer state", in: ResumeInput{Own: own(150, 1), Offers: []StateOffer{offer("b", 200, 2), offer("c", 200, 2)}, MaxEpoch: 600},
			from: FromPeers, epoch: 200, donors: []string{"b", "c"}},
		{name: "agreement beats a newer lone liar", in: ResumeInput{Offers: []StateOffer{offer("b", 200, 2), offer("c", 200, 2), offer("liar", 599, 9)}, MaxEpoch: 600, Settle: true},
			from: FromPeers, epoch: 200, donors: []string{"b", "c"}},
		{name: "a lone liar far ahead is waited on first", in: ResumeInput{Offers: []StateOffer{offer("b", 200, 2), offer("c", 200, 2), offer("liar", 599, 9)}, MaxEpoch: 600},
			from: FromWait},
		{name: "offer past the run's end is ignored", in: ResumeInput{Own: own(200, 1), Offers: []StateOffer{offer("liar", 601, 9), offer("x", 601, 9)}, MaxEpoch: 600},
			from: FromOwn, epoch: 200},
		{name: "orphaned shard: the swarm vouches for a lone holder's checkpoint", in: ResumeInput{Offers: []StateOffer{offer("b", 120, 2)}, Swarm: 120, MaxEpoch: 600},
			from: FromPeers, epoch: 120, donors: []string{"b"}},
		{name: "orphaned shard: newest of several checkpoints", in: ResumeInput{Offers: []StateOffer{offer("b", 100, 2), offer("c", 120, 3), offer("d", 119, 4)}, Swarm: 120, MaxEpoch: 600},
			from: FromPeers, epoch: 120, donors: []string{"c"}},
		{name: "orphaned shard: a lone unvouched checkpoint after waiting", in: ResumeInput{Offers: []StateOffer{offer("b", 120, 2)}, MaxEpoch: 600, Settle: true},
			from: FromPeers, epoch: 120, donors: []string{"b"}},
		{name: "a peer listed twice is one peer", in: ResumeInput{Offers: []StateOffer{offer("b", 300, 2), offer("b", 300, 2)}, Swarm: 100, MaxEpoch: 600},
			from: FromWait},
		{name: "an offer without a peer is not a peer's", in: ResumeInput{Offers: []StateOffer{offer("", 300, 2)}, MaxEpoch: 600}, from: FromInit},
	}
	for _, c := range cases {
		got := Resume(c.in)
		if got.From != c.from || got.Epoch != c.epoch || !slices.Equal(got.Donors, c.donors) {
			t.Errorf("%s: got %v epoch %d donors %v (%s), want %v epoch %d donors %v", c.name, got.From, got.Epoch, got.Donors, got.Why, c.from, c.epoch, c.donors)
		}
	}
}

// TestResumeSameChoiceEverywhere: nodes shown the same offers in another
// order choose the same state.
func TestResumeSameChoiceEverywhere(t *testing.T) {
	offers := []StateOffer{offer("a", 200, 1), offer("b", 200, 2), offer("c", 200, 1), offer("d", 200, 2)}
	first := Resume(ResumeInput{Offers: offers, MaxEpoch: 600})
	rev := slices.Clone(offers)
	slices.Reverse(rev)
	second := Resume(ResumeInput{Offers: rev, MaxEpoch: 600})
	if first.From != FromPeers || first.Content != second.Content {
		t.Fatalf("%v %x / %v %x: the order of the offers changed the choice", first.From, first.Content[:1], second.From, second.Content[:1])
	}
}

// TestUnheld: a shard counts as held by an online or done holder, never by
// a joining one or a record of a shard the run does not have.
func TestUnheld(t *testing.T) {
	recs := []progress.Record{
		{Peer: "a", Shard: 0, State: progress.StateOnline},
		{Peer: "b", Shard: 1, State: progress.StateJoining},
		{Peer: "c", Shard: 2, State: progress.StateDone},
		{Peer: "d", Shard: 7, State: progress.StateOnline},
		{Peer: "e", Shard: -1, State: progress.StateJoining},
	}
	if got := Unheld(recs, 4); !slices.Equal(got, []int{1, 3}) {
		t.Fatalf("Unheld = %v, want [1 3]", got)
	}
	if got := Unheld(nil, 2); !slices.Equal(got, []int{0, 1}) {
		t.Fatalf("no records: Unheld = %v", got)
	}
}
