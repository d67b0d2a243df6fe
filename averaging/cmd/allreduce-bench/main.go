// Command allreduce-bench measures the averaging package on 127.0.0.1:
//
//	allreduce-bench run   -n 4 -mib 64 -codec none -rounds 3   # n peer processes, one all-reduce per round
//	                      [-agg centered-clip -norm-k 10]      # robust aggregation at the reducers
//	                      [-audit 1 -audit-rate 0.25]          # reducer audits: parts each member re-computes, share of rounds audited
//	allreduce-bench p2p   -mib 256                             # one libp2p stream between two processes
//	allreduce-bench match -n 64 -rounds 5                      # 64 in-process peers grouped by matchmaking
//
// Each prints one JSON object on stdout. Peers are separate processes (the
// "peer" subcommand, started by "run" and "p2p") on TCP with the default
// libp2p security (encrypted) and yamux.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/multiformats/go-multiaddr"

	"github.com/swarm-train/swarm/averaging"
	"github.com/swarm-train/swarm/internal/bulk"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: allreduce-bench run|p2p|match|peer [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(os.Args[2:])
	case "p2p":
		err = cmdP2P(os.Args[2:])
	case "match":
		err = cmdMatch(os.Args[2:])
	case "peer":
		err = cmdPeer(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "allreduce-bench:", err)
		os.Exit(1)
	}
}

// key derives peer i's identity from a fixed seed so every process knows
// every peer id without exchanging anything.
func key(i int) crypto.PrivKey {
	seed := make([]byte, 64)
	binary.LittleEndian.PutUint64(seed, uint64(i)+0x5eed)
	k, _, err := crypto.GenerateEd25519Key(&repeatReader{seed})
	if err != nil {
		panic(err)
	}
	return k
}

type repeatReader struct{ b []byte }

func (r *repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.b[i%len(r.b)]
	}
	return len(p), nil
}

// freePorts finds n free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

func parsePorts(s string) ([]int, error) {
	var ports []int
	for _, f := range strings.Split(s, ",") {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("bad port list %q", s)
		}
		ports = append(ports, p)
	}
	return ports, nil
}

func newHost(i, port int) (host.Host, error) {
	return libp2p.New(libp2p.Identity(key(i)),
		libp2p.ListenAddrStrings(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)),
		libp2p.NoTransports, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(), libp2p.ResourceManager(&network.NullResourceManager{}),
		// Loopback only: no NAT detection (its ambient service can hang in Close).
		libp2p.ForceReachabilityPublic())
}

func peerInfo(i, port int) peer.AddrInfo {
	id, _ := peer.IDFromPrivateKey(key(i))
	return peer.AddrInfo{ID: id, Addrs: []multiaddr.Multiaddr{multiaddr.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port))}}
}

// connectAll connects h to every other peer, retrying while they start.
func connectAll(ctx context.Context, h host.Host, infos []peer.AddrInfo) error {
	for _, ai := range infos {
		if ai.ID == h.ID() {
			continue
		}
		h.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
		for {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := h.Connect(cctx, ai)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("connect %s: %w", ai.ID, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// cpuSeconds is the CPU time (user and system) this process used so far,
// and its minor page faults (first touches of memory from the OS: ~25 µs
// each on this VM, so a round that grows the heap pays for it).
func cpuSeconds() (float64, int64) {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds(), ru.Minflt
}

func maxRSSKiB() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Maxrss
}

type roundOut struct {
	Peer     int     `json:"peer"`
	Round    int     `json:"round"`
	ReduceS  float64 `json:"reduce_s"`
	MatchS   float64 `json:"match_s"`
	Fraction float64 `json:"fraction"`
	Members  int     `json:"members"`
	Sent     int64   `json:"sent"`
	Recv     int64   `json:"recv"`
	MaxRSS   int64   `json:"maxrss_kib,omitempty"`
	Security string  `json:"security,omitempty"`
	MiBps    float64 `json:"mibps,omitempty"`
	CPUS     float64 `json:"cpu_s,omitempty"`
	Faults   int64   `json:"minflt,omitempty"`
	Audits   int     `json:"audits,omitempty"`
	Audited  bool    `json:"audited,omitempty"`
	Accused  int     `json:"accused,omitempty"`
	Bulk     int64   `json:"bulk,omitempty"`   // transfers upgraded to bulk connections, both sides
	Stayed   int64   `json:"stayed,omitempty"` // transfers offered bulk that stayed on libp2p
	Err      string  `json:"err,omitempty"`
}

// cmdPeer is one process of a multi-process run.
func cmdPeer(args []string) error {
	fs := flag.NewFlagSet("peer", flag.ExitOnError)
	mode := fs.String("mode", "allreduce", "allreduce or p2p")
	n := fs.Int("n", 2, "peers")
	idx := fs.Int("i", 0, "this peer's index")
	portList := fs.String("ports", "", "comma-separated ports of peers 0..n-1")
	mib := fs.Int("mib", 64, "vector size in MiB")
	rounds := fs.Int("rounds", 3, "rounds")
	codec := fs.String("codec", "none", "none, bf16, fp16, int8")
	agg := fs.String("agg", "mean", "mean, centered-clip, trimmed-mean")
	normK := fs.Float64("norm-k", 0, "reject parts above k × the median norm (0: off)")
	audit := fs.Int("audit", 0, "reducer audits: parts each member re-computes per round (0: off)")
	auditRate := fs.Float64("audit-rate", 0, "reducer audits: share of rounds audited (0: every round)")
	profile := fs.String("cpuprofile", "", "peer 0 writes a CPU profile of its rounds after the first here")
	useBulk := fs.Bool("bulk", true, "carry transfers on direct TCP connections (internal/bulk) instead of libp2p streams")
	_ = fs.Parse(args)
	ports, err := parsePorts(*portList)
	if err != nil || len(ports) != *n {
		return fmt.Errorf("-ports must list %d ports", *n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	h, err := newHost(*idx, ports[*idx])
	if err != nil {
		return err
	}
	defer h.Close()
	infos := make([]peer.AddrInfo, *n)
	ids := make([]peer.ID, *n)
	for i := range infos {
		infos[i] = peerInfo(i, ports[i])
		ids[i] = infos[i].ID
	}
	if err := connectAll(ctx, h, infos); err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	if *mode == "p2p" {
		return p2pPeer(ctx, h, *idx, ids, *mib, enc)
	}
	c, err := averaging.ParseCodec(*codec)
	if err != nil {
		return err
	}
	ag, err := averaging.ParseAggregation(*agg)
	if err != nil {
		return err
	}
	logger, err := peerLogger(*idx)
	if err != nil {
		return err
	}
	var bs *bulk.Service
	if *useBulk {
		if bs, err = bulk.New(h, bulk.Config{Listen: "127.0.0.1:0"}); err != nil {
			return err
		}
		defer bs.Close()
	}
	a, err := averaging.New(h, averaging.Config{
		Peers:           func(context.Context, string) []peer.ID { return ids },
		TargetGroupSize: *n, MinGroupSize: *n, Bulk: bs,
		MatchWindow: 3 * time.Second, MatchTimeout: 60 * time.Second, RequestTimeout: 500 * time.Millisecond,
		AllreduceTimeout: 5 * time.Minute, SenderTimeout: time.Minute,
		Compression: c, Aggregation: ag, NormK: *normK, AuditParts: *audit, AuditRate: *auditRate,
		Logger: logger,
	})
	if err != nil {
		return err
	}
	defer a.Close()
	vec := make([]float32, *mib<<20/4)
	rng := mrand.New(mrand.NewPCG(uint64(*idx), 1))
	for r := 1; r <= *rounds; r++ {
		if r == 2 && *profile != "" && *idx == 0 {
			f, err := os.Create(*profile)
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
		}
		// Fresh values every round (before matchmaking, outside the timed
		// all-reduce): after a round every peer holds the same vector, and a
		// robust aggregation's cost depends on how the inputs differ.
		for i := range vec {
			vec[i] = float32(rng.NormFloat64())
		}
		cpu0, flt0 := cpuSeconds()
		res, err := a.Step(ctx, "bench", uint64(r), vec, 1, averaging.WithoutGossip())
		cpu1, flt1 := cpuSeconds()
		out := roundOut{CPUS: cpu1 - cpu0, Faults: flt1 - flt0, Peer: *idx, Round: r, ReduceS: res.ReduceTime.Seconds(), MatchS: res.MatchTime.Seconds(),
			Fraction: res.Fraction, Members: len(res.Members), Sent: res.BytesSent, Recv: res.BytesReceived,
			Audits: res.Audits, Audited: res.Audited, Accused: len(res.Accusations)}
		if err != nil {
			out.Err = err.Error()
		}
		if r == *rounds {
			out.MaxRSS = maxRSSKiB()
		}
		if bs != nil {
			out.Bulk, out.Stayed = bs.Stats()
		}
		if err := enc.Encode(out); err != nil {
			return err
		}
	}
	return nil
}

const p2pProto = "/swarm/bench/p2p/1.0.0"

// p2pPeer: peer 1 receives and times, peer 0 sends mib MiB on one stream.
func p2pPeer(ctx context.Context, h host.Host, idx int, ids []peer.ID, mib int, enc *json.Encoder) error {
	total := int64(mib) << 20
	if idx == 1 {
		done := make(chan roundOut, 1)
		h.SetStreamHandler(p2pProto, func(s network.Stream) {
			defer s.Close()
			start := time.Now()
			n, err := io.Copy(io.Discard, s)
			el := time.Since(start)
			out := roundOut{Peer: 1, Recv: n, ReduceS: el.Seconds(), MiBps: float64(n) / (1 << 20) / el.Seconds(),
				Security: string(s.Conn().ConnState().Security)}
			if err != nil {
				out.Err = err.Error()
			}
			_, _ = s.Write([]byte{1})
			done <- out
		})
		select {
		case out := <-done:
			out.MaxRSS = maxRSSKiB()
			return enc.Encode(out)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	time.Sleep(200 * time.Millisecond) // the receiver registers its handler after connecting
	var s network.Stream
	var err error
	for range 50 {
		if s, err = h.NewStream(ctx, ids[1], p2pProto); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	_, _ = rand.Read(buf)
	for sent := int64(0); sent < total; sent += int64(len(buf)) {
		if _, err := s.Write(buf); err != nil {
			return err
		}
	}
	_ = s.CloseWrite()
	var one [1]byte
	_, _ = io.ReadFull(s, one[:])
	return enc.Encode(roundOut{Peer: 0, Sent: total})
}

func spawn(ctx context.Context, n int, args ...string) ([]roundOut, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	ps := make([]string, n)
	for i, p := range ports {
		ps[i] = strconv.Itoa(p)
	}
	args = append(args, "-ports", strings.Join(ps, ","))
	var mu sync.Mutex
	var outs []roundOut
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		cmd := exec.CommandContext(ctx, self, append([]string{"peer", "-i", fmt.Sprint(i), "-n", fmt.Sprint(n)}, args...)...)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				var o roundOut
				if json.Unmarshal(sc.Bytes(), &o) == nil {
					mu.Lock()
					outs = append(outs, o)
					mu.Unlock()
				}
			}
			if err := cmd.Wait(); err != nil {
				errs <- fmt.Errorf("peer %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return outs, <-errs
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func cmdRun(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	n := fs.Int("n", 4, "peer processes")
	mib := fs.Int("mib", 64, "vector size in MiB")
	rounds := fs.Int("rounds", 3, "rounds (the first is a warm-up and not counted when rounds > 1)")
	codec := fs.String("codec", "none", "none, bf16, fp16, int8")
	agg := fs.String("agg", "mean", "aggregation: mean, centered-clip, trimmed-mean")
	normK := fs.Float64("norm-k", 0, "reject parts above k × the median norm (0: off)")
	audit := fs.Int("audit", 0, "reducer audits: parts each member re-computes per round (0: off)")
	auditRate := fs.Float64("audit-rate", 0, "reducer audits: share of rounds audited (0: every round)")
	profile := fs.String("cpuprofile", "", "write peer 0's CPU profile (rounds after the first) to this file")
	useBulk := fs.Bool("bulk", true, "carry transfers on direct TCP connections (internal/bulk) instead of libp2p streams")
	_ = fs.Parse(args)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	outs, err := spawn(ctx, *n, "-mode", "allreduce", "-mib", fmt.Sprint(*mib), "-rounds", fmt.Sprint(*rounds),
		"-codec", *codec, "-agg", *agg, "-norm-k", fmt.Sprint(*normK), "-audit", fmt.Sprint(*audit), "-audit-rate", fmt.Sprint(*auditRate), "-cpuprofile", *profile,
		"-bulk="+fmt.Sprint(*useBulk))
	if err != nil {
		return err
	}
	// Per round: the slowest peer's all-reduce time, and the CPU time of
	// every peer's step together (what the round costs the machine, less
	// sensitive to other load than the time).
	slowest := map[int]float64{}
	cpu := map[int]float64{}
	faults := map[int]float64{}
	var rss int64
	minFrac := 1.0
	var sent int64
	audits, accused := 0, 0
	var bulkN, stayedN int64  // over all rounds (each peer's last report is its total)
	audited := map[int]bool{} // rounds some peer audited
	var errs []error          // every peer's, not only the first: one peer's failure often causes the others'
	for _, o := range outs {
		if o.Err != "" {
			errs = append(errs, fmt.Errorf("peer %d round %d: %s", o.Peer, o.Round, o.Err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, o := range outs {
		audits += o.Audits
		accused += o.Accused
		if o.Audited && (o.Round > 1 || *rounds == 1) {
			audited[o.Round] = true
		}
		slowest[o.Round] = math.Max(slowest[o.Round], o.ReduceS)
		cpu[o.Round] += o.CPUS
		faults[o.Round] += float64(o.Faults)
		rss = max(rss, o.MaxRSS)
		minFrac = math.Min(minFrac, o.Fraction)
		if o.Round == *rounds {
			sent = max(sent, o.Sent)
			bulkN += o.Bulk
			stayedN += o.Stayed
		}
	}
	var times, cpus, flts []float64
	for r := 1; r <= *rounds; r++ {
		if t, ok := slowest[r]; ok && (r > 1 || *rounds == 1) {
			times = append(times, t)
			cpus = append(cpus, cpu[r])
			flts = append(flts, faults[r])
		}
	}
	t := median(times)
	// Means as well as medians: with audits drawn (-audit-rate) a median
	// is an unaudited round's cost, the mean what rounds cost on average.
	var cpuMean, timeMean float64
	for i, c := range cpus {
		cpuMean += c / float64(len(cpus))
		timeMean += times[i] / float64(len(times))
	}
	size := float64(int64(*mib) << 20)
	busbw := size * 2 * float64(*n-1) / float64(*n) / t
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"n": *n, "mib": *mib, "codec": *codec, "agg": *agg, "norm_k": *normK, "audit": *audit, "audit_rate": *auditRate, "audits": audits, "audited_rounds": len(audited), "cpu_mean_s": cpuMean, "time_mean_s": timeMean,
		"accused": accused, "rounds": len(times), "time_s": t, "times_s": times, "cpu_s": median(cpus), "cpus_s": cpus,
		"minflt":         median(flts),
		"transfers_bulk": bulkN, "transfers_libp2p": stayedN,
		"busbw_mibps": busbw / (1 << 20), "fraction_min": minFrac, "peak_rss_mib": float64(rss) / 1024,
		"rss_over_vector": float64(rss) * 1024 / size, "max_sent_mib": float64(sent) / (1 << 20),
	})
}

func cmdP2P(args []string) error {
	fs := flag.NewFlagSet("p2p", flag.ExitOnError)
	mib := fs.Int("mib", 256, "bytes to send, MiB")
	_ = fs.Parse(args)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	outs, err := spawn(ctx, 2, "-mode", "p2p", "-mib", fmt.Sprint(*mib))
	if err != nil {
		return err
	}
	for _, o := range outs {
		if o.Peer == 1 {
			if o.Err != "" {
				return fmt.Errorf("receiver: %s", o.Err)
			}
			return json.NewEncoder(os.Stdout).Encode(map[string]any{"mib": *mib, "time_s": o.ReduceS,
				"mibps": o.MiBps, "security": o.Security})
		}
	}
	return fmt.Errorf("no receiver report")
}

// cmdMatch groups n in-process peers (connected first, as a node's peers are
// through the DHT) with a small vector and reports how long matchmaking took.
func cmdMatch(args []string) error {
	fs := flag.NewFlagSet("match", flag.ExitOnError)
	n := fs.Int("n", 64, "peers")
	group := fs.Int("group", 8, "target group size")
	rounds := fs.Int("rounds", 5, "rounds")
	_ = fs.Parse(args)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	hs := make([]host.Host, *n)
	infos := make([]peer.AddrInfo, *n)
	ids := make([]peer.ID, *n)
	for i := range hs {
		h, err := newHost(i, 0)
		if err != nil {
			return err
		}
		defer h.Close()
		hs[i] = h
		infos[i] = peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}
		ids[i] = h.ID()
	}
	var wg sync.WaitGroup
	for i, h := range hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = connectAll(ctx, h, infos[i+1:])
		}()
	}
	wg.Wait()
	as := make([]*averaging.Averager, *n)
	for i, h := range hs {
		a, err := averaging.New(h, averaging.Config{
			Peers:           func(context.Context, string) []peer.ID { return ids },
			TargetGroupSize: *group, MatchWindow: time.Second, RequestTimeout: 200 * time.Millisecond,
			MatchTimeout: 3 * time.Second,
		})
		if err != nil {
			return err
		}
		defer a.Close()
		as[i] = a
	}
	var all []float64
	grouped, total := 0, 0
	sizes := map[int]int{}
	for r := 1; r <= *rounds; r++ {
		times := make([]float64, *n)
		members := make([]int, *n)
		for i, a := range as {
			wg.Add(1)
			go func() {
				defer wg.Done()
				vec := make([]float32, 1024)
				res, err := a.Step(ctx, "bench", uint64(r), vec, 1, averaging.WithoutGossip())
				times[i] = res.MatchTime.Seconds()
				if err == nil && res.Mode == averaging.ModeGroup {
					members[i] = len(res.Members)
				}
			}()
		}
		wg.Wait()
		all = append(all, times...)
		for _, m := range members {
			total++
			if m > 0 {
				grouped++
				sizes[m]++
			}
		}
	}
	slices.Sort(all)
	p := func(q float64) float64 { return all[int(math.Ceil(q*float64(len(all))))-1] }
	return json.NewEncoder(os.Stdout).Encode(map[string]any{"n": *n, "group": *group, "rounds": *rounds,
		"p50_s": p(0.5), "p95_s": p(0.95), "max_s": all[len(all)-1], "grouped_frac": float64(grouped) / float64(total),
		"group_sizes": sizes})
}

// peerLogger logs a peer's averaging to stderr at the level in
// ALLREDUCE_BENCH_LOG (debug, info, warn, error); unset, nothing.
func peerLogger(idx int) (*slog.Logger, error) {
	var lvl slog.Level
	name := os.Getenv("ALLREDUCE_BENCH_LOG")
	if name == "" {
		return nil, nil
	}
	if err := lvl.UnmarshalText([]byte(name)); err != nil {
		return nil, fmt.Errorf("ALLREDUCE_BENCH_LOG=%q: want debug, info, warn or error", name)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})).With("peer", idx), nil
}
