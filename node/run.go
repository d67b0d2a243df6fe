package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"
)

// RunIDFromName is the placeholder run ID: the CIDv1 (raw codec, sha2-256)
// of the run name. Once the run manifest exists, Config.RunID carries the
// manifest's CID instead and this function is no longer consulted.
func RunIDFromName(name string) cid.Cid {
	sum, err := mh.Sum([]byte(name), mh.SHA2_256, -1)
	if err != nil {
		panic(err) // sha2-256 is always available
	}
	return cid.NewCidV1(cid.Raw, sum)
}

// Timing of run discovery. Queries start fast so that a joiner on a LAN finds
// its run in about a second, then back off to Config.DiscoveryInterval.
const (
	firstQueryDelay      = 200 * time.Millisecond
	defaultDiscoveryMax  = 30 * time.Second
	runAnnounceInterval  = 10 * time.Minute
	providerValidity     = 30 * time.Minute
	dialTimeout          = 5 * time.Second
	helloTimeout         = 5 * time.Second
	failedPeerBackoff    = 30 * time.Second
	maxParallelDials     = 16
	maxRecheck           = 64 // lost members redialled per discovery round
	runConnProtectionTag = "swarm-run"
	workProtectionTag    = "swarm-work"
	linkRetry            = 2 * time.Minute // a progress stream retries a failing hello this long (ensureLinked)
)

// A node keeps connections to the run peers it works with and to enough
// others for the progress topic's mesh, not to the whole run: it dials new
// run candidates (and redials lost members) only while fewer than
// dialTarget members are connected, and protects from the connection
// manager the first dialTarget members and the peers its trainer works
// with (SetWorkPeers), at most protectMax of those. Others may dial it;
// past the connection manager's high mark the unprotected connections
// (GossipSub's mesh ranked first among them) are trimmed.

// dialTarget is the connected members a node seeks: a quarter of the
// connection manager's low mark, at least 8 (32 by default).
func (n *Node) dialTarget() int { return max(8, n.cfg.ConnsLow/4) }

// protectMax bounds the work peers protected: half the low mark.
func (n *Node) protectMax() int { return max(8, n.cfg.ConnsLow/2) }

// SetWorkPeers protects the connections to the peers this node works with
// (most needed first; at most protectMax of them) and releases those it no
// longer works with. The training service calls it every few seconds.
func (n *Node) SetWorkPeers(ps []peer.ID) {
	ps = ps[:min(len(ps), n.protectMax())]
	keep := make(map[peer.ID]bool, len(ps))
	for _, p := range ps {
		keep[p] = true
	}
	n.workMu.Lock()
	defer n.workMu.Unlock()
	cm := n.host.ConnManager()
	for p := range n.work {
		if !keep[p] {
			cm.Unprotect(p, workProtectionTag)
		}
	}
	for p := range keep {
		if !n.work[p] {
			cm.Protect(p, workProtectionTag)
		}
	}
	n.work = keep
}

// WorkPeers returns the peers SetWorkPeers protects now.
func (n *Node) WorkPeers() []peer.ID {
	n.workMu.Lock()
	defer n.workMu.Unlock()
	out := make([]peer.ID, 0, len(n.work))
	for p := range n.work {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// membership keeps the set of live, verified peers of this node's run.
type membership struct {
	n        *Node
	runID    cid.Cid
	maxDelay time.Duration

	mu       sync.Mutex
	peers    map[peer.ID]time.Time // admitted peers of our run → when admission ends (zero: never)
	guarded  map[peer.ID]bool      // members whose connection is protected (dialTarget at most)
	dialled  atomic.Int64          // candidates discovery dialled (metrics, tests)
	failed   map[peer.ID]time.Time
	inflight map[peer.ID]chan struct{} // hellos we dialled, under way; closed when they end
	// helloErr is why the hello we last dialled with a peer failed, for
	// the callers that waited on it (maxHelloErrs at most).
	helloErr map[peer.ID]error
	// listening holds the hellos peers dialled to us, under way.
	listening map[peer.ID][]chan struct{}
	own       admissionState // the latest refusal of this node by a peer
	wake      chan struct{}
	// announced is closed after the first successful announcement.
	announced     chan struct{}
	announcedOnce sync.Once
}

func newMembership(n *Node, runID cid.Cid, maxDelay time.Duration) *membership {
	if maxDelay <= 0 {
		maxDelay = defaultDiscoveryMax
	}
	return &membership{
		n:         n,
		runID:     runID,
		maxDelay:  maxDelay,
		peers:     make(map[peer.ID]time.Time),
		guarded:   make(map[peer.ID]bool),
		failed:    make(map[peer.ID]time.Time),
		inflight:  make(map[peer.ID]chan struct{}),
		helloErr:  make(map[peer.ID]error),
		listening: make(map[peer.ID][]chan struct{}),
		wake:      make(chan struct{}, 1),
		announced: make(chan struct{}),
	}
}

// refresh asks the discovery loop for a query now.
func (m *membership) refresh() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// list returns the verified run peers that are still connected, sorted.
func (m *membership) list() []peer.AddrInfo {
	h := m.n.host
	m.mu.Lock()
	ids := make([]peer.ID, 0, len(m.peers))
	now := time.Now()
	for p, exp := range m.peers {
		if (exp.IsZero() || now.Before(exp)) && linked(h.Network().Connectedness(p)) {
			ids = append(ids, p)
		}
	}
	m.mu.Unlock()
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	out := make([]peer.AddrInfo, 0, len(ids))
	for _, p := range ids {
		out = append(out, h.Peerstore().PeerInfo(p))
	}
	return out
}

// linked reports whether a peer is connected for the run's purposes:
// directly, or through a relay (limited: the hello and progress records
// pass; training streams wait for a direct connection).
func linked(c network.Connectedness) bool {
	return c == network.Connected || c == network.Limited
}

// connected counts the admitted members connected now.
func (m *membership) connected() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for p, exp := range m.peers {
		if (exp.IsZero() || time.Now().Before(exp)) && linked(m.n.host.Network().Connectedness(p)) {
			n++
		}
	}
	return n
}

func (m *membership) add(p peer.ID, expires time.Time) {
	m.mu.Lock()
	_, had := m.peers[p]
	m.peers[p] = expires
	delete(m.failed, p)
	guard := !m.guarded[p] && len(m.guarded) < m.n.dialTarget()
	if guard {
		m.guarded[p] = true
	}
	m.mu.Unlock()
	if guard {
		m.n.host.ConnManager().Protect(p, runConnProtectionTag)
	}
	if !had {
		m.n.metrics.runPeersFound.Inc()
		m.n.log.Debug("run peer verified", "peer", p)
	}
}

// maxFailed bounds the peers remembered as failed.
const maxFailed = 4096

// failLocked marks p failed now. Marks past the backoff are forgotten, and
// beyond maxFailed an arbitrary one goes: a flood of fresh peer IDs cannot
// grow the map (m.mu held).
func (m *membership) failLocked(p peer.ID, now time.Time) {
	if len(m.failed) >= maxFailed {
		for q, t := range m.failed {
			if now.Sub(t) >= failedPeerBackoff {
				delete(m.failed, q)
			}
		}
		for q := range m.failed {
			if len(m.failed) < maxFailed {
				break
			}
			delete(m.failed, q)
		}
	}
	m.failed[p] = now
}

func (m *membership) drop(p peer.ID) {
	m.mu.Lock()
	_, had := m.peers[p]
	delete(m.peers, p)
	guarded := m.guarded[p]
	delete(m.guarded, p)
	m.failLocked(p, time.Now())
	m.mu.Unlock()
	if guarded {
		m.n.host.ConnManager().Unprotect(p, runConnProtectionTag)
	}
	if had {
		m.n.log.Debug("run peer lost", "peer", p)
	}
}

// forget removes p from the members without marking it failed.
func (m *membership) forget(p peer.ID) {
	m.mu.Lock()
	delete(m.peers, p)
	guarded := m.guarded[p]
	delete(m.guarded, p)
	m.mu.Unlock()
	if guarded {
		m.n.host.ConnManager().Unprotect(p, runConnProtectionTag)
	}
}

func (m *membership) skip(p peer.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if exp, ok := m.peers[p]; ok && (exp.IsZero() || time.Now().Before(exp)) &&
		linked(m.n.host.Network().Connectedness(p)) {
		return true
	}
	t, ok := m.failed[p]
	return ok && time.Since(t) < failedPeerBackoff
}

// run announces the run and queries for its peers until ctx ends.
func (m *membership) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		m.n.announceLoop(ctx, m.runID, runAnnounceInterval, func() {
			m.announcedOnce.Do(func() { close(m.announced) })
			m.refresh()
		})
	}()

	delay := firstQueryDelay
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-m.wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		if m.discover(ctx) {
			delay = min(2*delay, m.maxDelay)
		}
		timer.Reset(delay)
	}
}

// discover runs one query for the run's providers and verifies each new
// one. It returns false when it could not query (empty routing table).
func (m *membership) discover(ctx context.Context) bool {
	if m.n.dht.RoutingTable().Size() == 0 {
		return false
	}
	m.n.metrics.runQueries.Inc()
	qctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	sem := make(chan struct{}, maxParallelDials)
	var wg sync.WaitGroup
	var dialing atomic.Int64 // hellos under way: they count toward dialTarget
	for ai := range m.n.dht.FindProvidersAsync(qctx, m.runID, 0) {
		if ai.ID == m.n.host.ID() || m.skip(ai.ID) {
			continue
		}
		sem <- struct{}{}
		if m.connected()+int(dialing.Load()) >= m.n.dialTarget() {
			<-sem
			continue
		}
		dialing.Add(1)
		m.dialled.Add(1)
		wg.Add(1)
		go func(ai peer.AddrInfo) {
			defer wg.Done()
			defer func() { <-sem }()
			defer dialing.Add(-1)
			if err := m.verify(ctx, ai); err != nil {
				m.drop(ai.ID)
				m.n.log.Debug("run candidate rejected", "peer", ai.ID, "err", err)
			}
		}(ai)
	}
	wg.Wait()
	// Re-check members we lost the connection to, in parallel and at most
	// maxRecheck a round: a flood of identities that passed the hello and
	// left must not hold discovery up for a dial timeout each. The rest are
	// forgotten; real peers come back through the DHT or by dialling us.
	// A node with dialTarget members connected re-checks none: the ones it
	// lost were let go by the connection manager, or are gone.
	m.mu.Lock()
	var lost []peer.ID
	for p := range m.peers {
		if !linked(m.n.host.Network().Connectedness(p)) {
			lost = append(lost, p)
		}
	}
	m.mu.Unlock()
	room := max(0, m.n.dialTarget()-m.connected())
	for i, p := range lost {
		if i >= min(maxRecheck, room) {
			m.forget(p)
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(p peer.ID) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := m.verify(ctx, m.n.host.Peerstore().PeerInfo(p)); err != nil {
				m.drop(p)
			}
		}(p)
	}
	wg.Wait()
	m.n.metrics.runPeers.Set(float64(len(m.list())))
	return true
}

// maxHelloErrs bounds the failed hellos remembered for their waiters.
const maxHelloErrs = 1024

// errHelloAnswered marks a hello that completed with a verdict against
// admission (another run, refused by either side): asking again changes
// nothing until something else does.
var errHelloAnswered = errors.New("answered")

// verify connects to ai and runs the hello handshake: it sends this node's
// hello, reads the peer's answer, and admits the peer when the answer is
// for this run, carries a valid admission (token runs) and did not refuse
// us. Concurrent calls for one peer share one handshake.
func (m *membership) verify(ctx context.Context, ai peer.AddrInfo) (err error) {
	m.mu.Lock()
	if wait, ok := m.inflight[ai.ID]; ok {
		m.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
		if m.admitted(ai.ID) {
			return nil
		}
		m.mu.Lock()
		why := m.helloErr[ai.ID]
		m.mu.Unlock()
		if why != nil {
			// The same answer as the caller that ran it (a refusal
			// names its reason).
			return why
		}
		return errors.New("the run hello under way did not admit the peer")
	}
	done := make(chan struct{})
	m.inflight[ai.ID] = done
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.inflight, ai.ID)
		switch {
		case err == nil:
			delete(m.helloErr, ai.ID)
		case len(m.helloErr) < maxHelloErrs:
			m.helloErr[ai.ID] = err
		}
		m.mu.Unlock()
		close(done)
	}()

	// The hello may run over a relayed (limited) connection: a peer behind
	// NAT joins the run at once, and the relayed connection is what DCUtR
	// needs to punch a direct one. Training streams wait for that (RunHost).
	dctx, cancel := context.WithTimeout(network.WithAllowLimitedConn(ctx, "run hello"), dialTimeout)
	defer cancel()
	m.n.addRelayRoutes(ai.ID)
	if err := m.n.host.Connect(dctx, ai); err != nil {
		m.n.nat.dialFailed(ai.ID, err, time.Now())
		return fmt.Errorf("connect: %w", err)
	}
	m.n.nat.connected(ai.ID)
	s, err := m.n.host.NewStream(dctx, ai.ID, HelloProtocol)
	if err != nil {
		return fmt.Errorf("open hello: %w", err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(helloTimeout))
	if err := writeHello(s, hello{Run: m.runID, Token: m.n.cfg.Admission.Token}); err != nil {
		s.Reset()
		return fmt.Errorf("send hello: %w", err)
	}
	theirs, err := readHello(s)
	if err != nil {
		s.Reset()
		if errors.Is(err, errBadHello) {
			m.n.refusals.Refuse(ai.ID, string(HelloProtocol), refuseMalformed, err)
			_ = m.n.host.Network().ClosePeer(ai.ID)
		}
		return err
	}
	if !theirs.Run.Equals(m.runID) {
		return fmt.Errorf("%w: peer is in run %s, not %s", errHelloAnswered, theirs.Run, m.runID)
	}
	if theirs.Refused {
		m.own.set(ai.ID, theirs.Reason)
		m.n.log.Warn("a run peer refused this node's admission", "peer", ai.ID, "reason", theirs.Reason,
			"help", admissionHelp(theirs.Reason))
		return fmt.Errorf("%w: refused by the peer: %s", errHelloAnswered, theirs.Reason)
	}
	// Our verdict on the listener ends the handshake: the listener counts
	// us only once it has read that we admit it too.
	exp, reason, err := m.admit(ai.ID, theirs, time.Now())
	verdict := hello{Run: m.runID}
	if reason != "" {
		if err != nil {
			m.n.refusals.Refuse(ai.ID, string(HelloProtocol), reason, err)
			verdict.Refused, verdict.Reason = true, truncate(reason+": "+err.Error(), maxReasonLen)
			_ = writeHello(s, verdict)
		}
		return fmt.Errorf("%w: peer not admitted: %s: %v", errHelloAnswered, reason, err)
	}
	if err := writeHello(s, verdict); err != nil {
		s.Reset()
		return fmt.Errorf("send verdict: %w", err)
	}
	m.add(ai.ID, exp)
	return nil
}

// handleHello answers a peer's handshake: it reads the dialer's hello,
// answers with its own and its verdict on the dialer (a refused dialer is
// told why), then reads the dialer's verdict on it. Only a dialer that is
// admitted and admits us back counts as a run member. While this runs, the
// gate holds the dialer's training streams (it may start them as soon as it
// has sent its verdict).
func (m *membership) handleHello(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(helloTimeout))
	p := s.Conn().RemotePeer()
	done := make(chan struct{})
	m.mu.Lock()
	m.listening[p] = append(m.listening[p], done)
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		l := m.listening[p]
		for i, c := range l {
			if c == done {
				l = append(l[:i], l[i+1:]...)
				break
			}
		}
		if len(l) == 0 {
			delete(m.listening, p)
		} else {
			m.listening[p] = l
		}
		m.mu.Unlock()
		close(done)
	}()

	theirs, err := readHello(s)
	if err != nil {
		s.Reset()
		m.n.refusals.Refuse(p, string(HelloProtocol), refuseMalformed, err)
		_ = m.n.host.Network().ClosePeer(p)
		return
	}
	answer := hello{Run: m.runID, Token: m.n.cfg.Admission.Token}
	exp, reason, err := m.admit(p, theirs, time.Now())
	if err != nil {
		m.n.refusals.Refuse(p, string(HelloProtocol), reason, err)
		answer.Refused, answer.Reason = true, truncate(reason+": "+err.Error(), maxReasonLen)
	}
	if err := writeHello(s, answer); err != nil {
		s.Reset()
		return
	}
	if reason != "" {
		return
	}
	verdict, err := readHello(s)
	switch {
	case err != nil:
		// A dialer of an older version closes after our answer; one that
		// sends garbage is refused.
		if errors.Is(err, errBadHello) && !errors.Is(err, io.EOF) {
			m.n.refusals.Refuse(p, string(HelloProtocol), refuseMalformed, err)
		}
	case verdict.Refused:
		m.own.set(p, verdict.Reason)
		m.n.log.Warn("a run peer refused this node's admission", "peer", p, "reason", verdict.Reason,
			"help", admissionHelp(verdict.Reason))
	default:
		m.add(p, exp)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// admissionHelp tells a volunteer what to do about a refusal of its token.
func admissionHelp(reason string) string {
	switch {
	case strings.HasPrefix(reason, refuseTokenMissing):
		return "this run admits only volunteers with a token: ask the run's operator for one and pass it with --token or SWARM_TOKEN"
	case strings.HasPrefix(reason, refuseTokenExpired):
		return "your admission token has expired: ask the run's operator for a new one (swarm run admit)"
	case strings.HasPrefix(reason, refuseTokenPeer):
		return "your token was issued for another peer ID: send the operator the peer ID that `swarm id` prints"
	case strings.HasPrefix(reason, refuseTokenOtherRun), strings.HasPrefix(reason, refuseTokenForged):
		return "your token is not for this run or not from its operator: check --run and --token"
	}
	return "check --token and the run manifest"
}

// announceLoop provides c in the DHT now (retrying with backoff until the
// routing table has peers) and again every interval, calling onDone after
// each success.
func (n *Node) announceLoop(ctx context.Context, c cid.Cid, interval time.Duration, onDone func()) {
	retry := 100 * time.Millisecond
	for {
		if n.dht.RoutingTable().Size() == 0 {
			// Nobody to store the record yet: check again soon, cheaply,
			// without growing the backoff meant for failed announcements.
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		t0 := time.Now()
		err := n.Announce(ctx, c)
		if err == nil {
			n.log.Debug("announced", "cid", c, "took", time.Since(t0))
		}
		wait := interval
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n.log.Debug("announce failed, retrying", "cid", c, "err", err, "in", retry)
			wait = retry
			retry = min(2*retry, 10*time.Second)
		} else {
			retry = 100 * time.Millisecond
			if onDone != nil {
				onDone()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Announce stores a provider record for c in the DHT: "this node has c".
// The run layer uses it for the run ID; the training layer can use it for
// shard claims or any other key.
func (n *Node) Announce(ctx context.Context, c cid.Cid) error {
	if n.dht.RoutingTable().Size() == 0 {
		return errors.New("announce: DHT routing table is empty")
	}
	if err := n.dht.Provide(ctx, c, true); err != nil {
		return fmt.Errorf("announce %s: %w", c, err)
	}
	return nil
}

// AnnounceEvery announces c now and every interval until ctx ends, retrying
// failed announcements with backoff. It returns at once.
func (n *Node) AnnounceEvery(ctx context.Context, c cid.Cid, interval time.Duration) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := n.mergeCtx(ctx)
		defer cancel()
		n.announceLoop(ctx, c, interval, nil)
	}()
}

// FindProviders returns the peers whose provider records for c the DHT
// holds, without dialling them (this node excluded).
func (n *Node) FindProviders(ctx context.Context, c cid.Cid) ([]peer.AddrInfo, error) {
	if n.dht.RoutingTable().Size() == 0 {
		return nil, errors.New("find providers: DHT routing table is empty")
	}
	var out []peer.AddrInfo
	for ai := range n.dht.FindProvidersAsync(ctx, c, 0) {
		if ai.ID != n.host.ID() {
			out = append(out, ai)
		}
	}
	return out, ctx.Err()
}

// FindPeers returns the providers of c that this node could connect to;
// peers that fail to connect within the dial timeout are left out.
func (n *Node) FindPeers(ctx context.Context, c cid.Cid) ([]peer.AddrInfo, error) {
	cands, err := n.FindProviders(ctx, c)
	if err != nil {
		return nil, err
	}
	var (
		mu  sync.Mutex
		out []peer.AddrInfo
		wg  sync.WaitGroup
		sem = make(chan struct{}, maxParallelDials)
	)
	for _, ai := range cands {
		sem <- struct{}{}
		wg.Add(1)
		go func(ai peer.AddrInfo) {
			defer wg.Done()
			defer func() { <-sem }()
			dctx, cancel := context.WithTimeout(ctx, dialTimeout)
			defer cancel()
			if n.host.Connect(dctx, ai) == nil {
				mu.Lock()
				out = append(out, n.host.Peerstore().PeerInfo(ai.ID))
				mu.Unlock()
			}
		}(ai)
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
