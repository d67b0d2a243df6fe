package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/node/api"
	"github.com/swarm-train/swarm/node/client"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/checkpoint"
	"github.com/swarm-train/swarm/swarm/data"
	"github.com/swarm-train/swarm/swarm/sample"
	"github.com/swarm-train/swarm/swarm/trainer"
)

func init() {
	register(&cli.Command{
		Name:  "demo",
		Usage: "start a local swarm on 127.0.0.1 that trains mlp-mnist, show its progress and the test accuracy",
		Description: `Starts one bootstrap node and --nodes volunteer nodes, each its own process with its
own home under --dir, all training one run of mlp-mnist split into --shards shards.
Prints the swarm's progress (epoch, loss, samples/s, peers per shard) every
--interval and, when the run is finished, the test accuracy; then stops every process.
Logs are in --dir/*.log.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Value: "demo-home", Usage: "directory for the nodes' homes and logs (emptied first)", EnvVars: []string{"DEMO_HOME"}},
			&cli.StringFlag{Name: "model", Value: run.ArchMLPMNIST, Usage: "mlp-mnist, gpt-char or a llama preset (llama-tiny is sized for CPUs)", EnvVars: []string{"DEMO_MODEL"}},
			&cli.StringFlag{Name: "corpus", Usage: "text models: a text file, one token a character (default: Go's Opticks text)", EnvVars: []string{"DEMO_CORPUS"}},
			&cli.StringFlag{Name: "prompt", Value: "The light ", Usage: "text models: the text the sample at the end continues"},
			&cli.IntFlag{Name: "sample-tokens", Value: 200, Usage: "text models: tokens of the sample at the end (0: none)"},
			&cli.IntFlag{Name: "nodes", Value: 4, Usage: "volunteer nodes", EnvVars: []string{"DEMO_NODES"}},
			&cli.IntFlag{Name: "shards", Value: 2, Usage: "shards the model is split into", EnvVars: []string{"DEMO_SHARDS"}},
			&cli.IntFlag{Name: "steps", Usage: "optimizer steps (default: the model's)", EnvVars: []string{"DEMO_STEPS"}},
			&cli.StringFlag{Name: "hidden", Usage: "hidden widths, comma-separated (default: the model's 1024,1024)", EnvVars: []string{"DEMO_HIDDEN"}},
			&cli.IntFlag{Name: "batch", Usage: "micro-batch size on one node (default: the model's); the optimizer step's batch stays the model's target batch", EnvVars: []string{"DEMO_BATCH"}},
			&cli.StringFlag{Name: "averaging", Value: run.ModeSync, Usage: "sync or local", EnvVars: []string{"DEMO_AVERAGING"}},
			&cli.StringFlag{Name: "activations", Value: run.ActivationsFP32, Usage: "precision of activations between shards: fp32, bf16, int8 or topk", EnvVars: []string{"DEMO_ACTIVATIONS"}},
			&cli.Float64Flag{Name: "activation-keep", Usage: "topk activations: the fraction of each sample's (text models: each position's) values sent (default 1: the non-zero ones); implies --activations topk", EnvVars: []string{"DEMO_ACTIVATION_KEEP"}},
			&cli.IntFlag{Name: "activation-rank", Usage: "a learned projection at every cut between shards: each sample's (text models: each position's) activations cross as this many values (0: none)", EnvVars: []string{"DEMO_ACTIVATION_RANK"}},
			&cli.StringFlag{Name: "compression", Value: run.CompressNone, Usage: "averaging compression: none, bf16, fp16 or int8", EnvVars: []string{"DEMO_COMPRESSION"}},
			&cli.Float64Flag{Name: "delta-keep", Usage: "local mode: compress deltas to this fraction of their values (topk, error feedback; outer lr 1, momentum 0)", EnvVars: []string{"DEMO_DELTA_KEEP"}},
			&cli.IntFlag{Name: "delta-bits", Value: 4, Usage: "with --delta-keep: bits a kept value (2, 4 or 8)", EnvVars: []string{"DEMO_DELTA_BITS"}},
			&cli.Float64Flag{Name: "outer-lr", Usage: "local mode: outer learning rate (default 0.7; 1 with --delta-keep)", EnvVars: []string{"DEMO_OUTER_LR"}},
			&cli.Float64Flag{Name: "outer-momentum", Usage: "local mode: outer Nesterov momentum (default 0.9; 0 with --delta-keep)", EnvVars: []string{"DEMO_OUTER_MOMENTUM"}},
			&cli.BoolFlag{Name: "delayed-updates", Usage: "sync mode: average each epoch's gradient while the next computes (one-step-delayed updates)", EnvVars: []string{"DEMO_DELAYED_UPDATES"}},
			&cli.IntFlag{Name: "threads", Value: 1, Usage: "engine threads per node", EnvVars: []string{"DEMO_THREADS"}},
			&cli.BoolFlag{Name: "bulk", Value: true, Usage: "averaging transfers on direct connections (each node's --bulk-listen 127.0.0.1:0); --bulk=false keeps them on libp2p streams", EnvVars: []string{"DEMO_BULK"}},
			&cli.DurationFlag{Name: "interval", Value: 3 * time.Second, Usage: "progress interval"},
			&cli.DurationFlag{Name: "timeout", Value: 20 * time.Minute, Usage: "give up after this long"},
		},
		Action: demo,
	})
}

type demoProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func demo(c *cli.Context) error {
	dir := c.String("dir")
	if c.Int("nodes") < 1 || c.Int("shards") < 1 {
		return cli.Exit("swarm demo: --nodes and --shards must be positive", 2)
	}
	m, err := demoManifest(c)
	if err != nil {
		return cli.Exit("swarm demo: "+err.Error(), 2)
	}
	if h := c.String("hidden"); h != "" {
		m.Model.Hidden = nil
		for _, f := range strings.Split(h, ",") {
			w, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return cli.Exit("swarm demo: --hidden: "+err.Error(), 2)
			}
			m.Model.Hidden = append(m.Model.Hidden, w)
		}
		if err := m.Split(c.Int("shards")); err != nil {
			return cli.Exit("swarm demo: --shards: "+err.Error(), 2)
		}
	}
	if c.IsSet("batch") {
		m.Training.BatchSize = c.Int("batch")
	}
	if s := c.Int("steps"); s > 0 {
		m.Training.Steps = s
		m.Optimizer.DecaySteps = max(s-m.Optimizer.WarmupSteps, 1)
	}
	// Two holders a shard: groups of two start as soon as both are there.
	m.Averaging.GroupSize, m.Averaging.MinGroupSize = 2, 2
	if c.String("averaging") == run.ModeLocal {
		m.Averaging.Mode, m.Averaging.LocalSteps, m.Averaging.OuterLR, m.Averaging.OuterMomentum = run.ModeLocal, 20, 0.7, 0.9
		m.Averaging.Overlap = true
	}
	m.Averaging.Compression = c.String("compression")
	setActivations(c, &m.Training)
	m.Averaging.DelayedUpdates = c.Bool("delayed-updates")
	if c.IsSet("delta-keep") {
		m.Averaging.DeltaCodec, m.Averaging.DeltaKeep, m.Averaging.DeltaBits = run.DeltaTopK, c.Float64("delta-keep"), c.Int("delta-bits")
		m.Averaging.OuterLR, m.Averaging.OuterMomentum = 1, 0
	}
	if c.IsSet("outer-lr") {
		m.Averaging.OuterLR = c.Float64("outer-lr")
	}
	if c.IsSet("outer-momentum") {
		m.Averaging.OuterMomentum = c.Float64("outer-momentum")
	}
	if err := m.Validate(); err != nil {
		return cli.Exit("swarm demo: "+err.Error(), 2)
	}
	if err := os.RemoveAll(dir); err != nil {
		return cli.Exit("swarm demo: "+err.Error(), 1)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return cli.Exit("swarm demo: "+err.Error(), 1)
	}
	manifest := filepath.Join(dir, "run.json")
	if err := m.Save(manifest); err != nil {
		return cli.Exit("swarm demo: "+err.Error(), 1)
	}
	id, _ := m.ID()
	lm := m.Model.LanguageModel()
	exe, err := os.Executable()
	if err != nil {
		return cli.Exit("swarm demo: "+err.Error(), 1)
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.Duration("timeout"))
	defer cancel()
	out := c.App.Writer
	var procs []*demoProc
	stopped := false
	// stopAll ends every process (a node writes its shutdown checkpoint
	// on SIGTERM, which the sample at the end of a text run reads).
	stopAll := func() {
		if stopped {
			return
		}
		stopped = true
		for _, p := range procs {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
		fmt.Fprintf(out, "demo: stopped %d processes; logs in %s\n", len(procs), dir)
	}
	defer stopAll()
	start := func(name string, args ...string) (*demoProc, error) {
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(exe, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.Env = demoEnv(c.Int("threads"), c.Int("nodes"))
		if err := cmd.Start(); err != nil {
			logf.Close()
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		p := &demoProc{name: name, cmd: cmd, done: make(chan struct{})}
		go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
		procs = append(procs, p)
		return p, nil
	}
	listen := []string{"--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"}
	begin := time.Now()
	// The bootstrap's public swarm page, on a free port of 127.0.0.1.
	pageAddr := "127.0.0.1:0"
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		pageAddr = ln.Addr().String()
		ln.Close()
	}
	if _, err := start("boot", append([]string{"bootstrap", "--home", filepath.Join(dir, "boot"),
		"--dashboard", pageAddr, "--dashboard-run", manifest}, listen...)...); err != nil {
		return cli.Exit("swarm demo: "+err.Error(), 1)
	}
	bc, err := waitClient(ctx, filepath.Join(dir, "boot"))
	if err != nil {
		return cli.Exit("swarm demo: bootstrap node: "+err.Error(), 1)
	}
	bid, err := bc.ID(ctx)
	if err != nil {
		return cli.Exit("swarm demo: bootstrap node: "+err.Error(), 1)
	}
	var bootAddr string
	for _, a := range bid.Addrs {
		if strings.Contains(a, "/tcp/") {
			bootAddr = a
			break
		}
	}
	fmt.Fprintf(out, "demo: run %s (%s, %d shards, %d steps of %d samples, %s mode)\n", id, m.Name, len(m.Shards), m.Training.Steps, m.Training.TargetBatch, m.Averaging.Mode)
	fmt.Fprintf(out, "demo: bootstrap node at %s; starting %d volunteer nodes\n", bootAddr, c.Int("nodes"))
	var clients []*client.Client
	for i := 1; i <= c.Int("nodes"); i++ {
		home := filepath.Join(dir, fmt.Sprintf("node%d", i))
		args := append([]string{"node", "--home", home, "--run", manifest, "--bootstrap", bootAddr,
			"--threads", strconv.Itoa(c.Int("threads")), "--rebalance-every", "10s"}, listen...)
		if c.Bool("bulk") {
			args = append(args, "--bulk-listen", "127.0.0.1:0")
		}
		if _, err := start(fmt.Sprintf("node%d", i), args...); err != nil {
			return cli.Exit("swarm demo: "+err.Error(), 1)
		}
	}
	for i := 1; i <= c.Int("nodes"); i++ {
		cl, err := waitClient(ctx, filepath.Join(dir, fmt.Sprintf("node%d", i)))
		if err != nil {
			return cli.Exit(fmt.Sprintf("swarm demo: node%d: %v (see %s/node%d.log)", i, err, dir, i), 1)
		}
		clients = append(clients, cl)
	}
	if u, err := clients[0].DashboardURL(); err == nil {
		fmt.Fprintf(out, "demo: node1's dashboard: %s\n", u)
	}
	fmt.Fprintf(out, "demo: the swarm's public page: http://%s/ (both stay up until the run ends)\n", pageAddr)
	tick := time.NewTicker(c.Duration("interval"))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return cli.Exit("swarm demo: "+context.Cause(ctx).Error(), 1)
		case <-tick.C:
		}
		for _, p := range procs {
			select {
			case <-p.done:
				return cli.Exit(fmt.Sprintf("swarm demo: %s exited (%v); see %s/%s.log", p.name, p.cmd.ProcessState, dir, p.name), 1)
			default:
			}
		}
		st, err := trainingStatus(ctx, clients)
		if err != nil {
			fmt.Fprintf(out, "[%6.1fs] waiting: %v\n", time.Since(begin).Seconds(), err)
			continue
		}
		printDemoLine(out, time.Since(begin), st)
		if st.Accuracy >= 0 {
			if !lm {
				fmt.Fprintf(out, "demo: finished %d epochs in %.0f s; test accuracy %.2f%%\n", st.Epoch, time.Since(begin).Seconds(), 100*st.Accuracy)
			} else {
				fmt.Fprintf(out, "demo: finished %d epochs in %.0f s%s\n", st.Epoch, time.Since(begin).Seconds(), validationLine(ctx, clients))
			}
			if m.Averaging.Mode == run.ModeLocal {
				printOuterTraffic(ctx, out, clients)
			}
			if lm && c.Int("sample-tokens") > 0 {
				stopAll()
				return demoSample(c, m, c.Int("nodes"))
			}
			return nil
		}
	}
}

// demoManifest is the run the demo trains: the MNIST MLP, or a text model
// on a corpus (--model, --corpus), split into --shards.
func demoManifest(c *cli.Context) (*run.Manifest, error) {
	model := c.String("model")
	if model == run.ArchMLPMNIST {
		if c.IsSet("corpus") {
			return nil, errors.New("--corpus is for text models (gpt-char, llama presets)")
		}
		m := run.NewMLPMNIST(c.Int("shards"))
		m.Dataset.Root = data.MNISTRoot // as run init pins it: the nodes check their copies, or fetch
		return m, nil
	}
	if c.IsSet("hidden") {
		return nil, fmt.Errorf("--hidden is for mlp-mnist, not %s", model)
	}
	if model != run.ArchGPTChar && !slices.Contains(run.LlamaPresets, model) {
		return nil, fmt.Errorf("--model %q: want %s, %s or a llama preset (%s)", model, run.ArchMLPMNIST, run.ArchGPTChar, strings.Join(run.LlamaPresets, ", "))
	}
	m, err := textManifest(model, c.String("corpus"), "")
	if err != nil {
		return nil, fmt.Errorf("--corpus: %w", err)
	}
	if units := m.Model.Units(); c.Int("shards") > units {
		return nil, fmt.Errorf("--shards %d: %s has only %d blocks to split", c.Int("shards"), model, units)
	}
	if m.Model.Arch == run.ArchLlama && c.Int("shards") > 1 {
		m.Model.TieEmbeddings = false // the embedding and the head live on different shards
	}
	if err := m.Split(c.Int("shards")); err != nil {
		return nil, fmt.Errorf("--shards: %w", err)
	}
	return m, nil
}

// validationLine is ", validation loss L (perplexity P)" from the first
// node that reports them, or "" when none does.
func validationLine(ctx context.Context, cls []*client.Client) string {
	for _, cl := range cls {
		ts, err := nodeTraining(ctx, cl, 5*time.Second, 1)
		if err == nil && ts.ValLoss != nil && ts.ValPerplexity != nil {
			return fmt.Sprintf(", validation loss %.4f (perplexity %.2f)", *ts.ValLoss, *ts.ValPerplexity)
		}
	}
	return ""
}

// demoSample prints text drawn from the model the nodes trained, its
// shards gathered from their shutdown checkpoints.
func demoSample(c *cli.Context, m *run.Manifest, nodes int) error {
	var runs []string
	for i := 1; i <= nodes; i++ {
		runs = append(runs, filepath.Join(c.String("dir"), fmt.Sprintf("node%d", i), "runs"))
	}
	a, err := checkpoint.AssembleNodeShards(runs, m, nil)
	if err != nil {
		return cli.Exit("swarm demo: sample: "+err.Error(), 1)
	}
	out := c.App.Writer
	prompt := c.String("prompt")
	fmt.Fprintf(out, "demo: a sample (temperature 0.8, top-k 40, epochs %v):\n%s", a.Epochs, prompt)
	err = drawText(m, a.Params, c.Int("threads"), prompt, c.Int("sample-tokens"), sample.Options{Temperature: 0.8, TopK: 40, Seed: 1},
		func(s string) error { _, err := fmt.Fprint(out, s); return err })
	fmt.Fprintln(out)
	if err != nil {
		return cli.Exit("swarm demo: sample: "+err.Error(), 1)
	}
	return nil
}

// printOuterTraffic prints, per node, the bytes of its local-mode outer
// rounds against what fp32 deltas would take (a group of two: 4 bytes a
// value out and back for its half, and the same as a reducer: 8 a value):
// a delta round's, an outer-state round's, and a round's over the whole run
// (both kinds, averaged with a peer).
func printOuterTraffic(ctx context.Context, out io.Writer, cls []*client.Client) {
	for i, cl := range cls {
		ts, err := nodeTraining(ctx, cl, 10*time.Second, 3) // a loaded machine answers slowly
		if err != nil {
			fmt.Fprintf(out, "demo: node%d: no status: %v\n", i+1, err)
			continue
		}
		if ts.OuterTraffic == nil {
			continue
		}
		tr := ts.OuterTraffic
		per := func(b int64, n uint64) float64 { return float64(b) / float64(max(n, 1)) }
		run := per(tr.DeltaBytes+tr.StateBytes, tr.DeltaRounds+tr.StateRounds)
		fmt.Fprintf(out, "demo: node%d outer traffic: shard %d, %d values; %d delta rounds, %.0f bytes each (%.1f× fewer than fp32's %d); %d outer-state rounds, %.0f bytes each; over the run %.0f bytes a round (%.1f× fewer)\n",
			i+1, ts.Shard, tr.Values, tr.DeltaRounds, per(tr.DeltaBytes, tr.DeltaRounds), 8*float64(tr.Values)/max(per(tr.DeltaBytes, tr.DeltaRounds), 1),
			8*tr.Values, tr.StateRounds, per(tr.StateBytes, tr.StateRounds), run, 8*float64(tr.Values)/max(run, 1))
	}
}

func waitClient(ctx context.Context, home string) (*client.Client, error) {
	for {
		if cl, err := client.FromHome(home); err == nil {
			if _, err := cl.ID(ctx); err == nil {
				return cl, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, errors.New("did not start")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var (
	errNoStatus   = errors.New("no status")
	errNoTraining = errors.New("no training service")
)

// nodeTraining asks a node for its training status, tries times, each
// within timeout.
func nodeTraining(ctx context.Context, cl *client.Client, timeout time.Duration, tries int) (*trainer.Status, error) {
	var st *api.Status
	err := errNoStatus
	for range tries {
		sctx, cancel := context.WithTimeout(ctx, timeout)
		st, err = cl.Status(sctx)
		cancel()
		if err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoStatus, err)
	}
	raw, ok := st.Services["training"]
	if !ok {
		return nil, errNoTraining
	}
	var ts trainer.Status
	if err := json.Unmarshal(raw, &ts); err != nil {
		return nil, fmt.Errorf("training status: %w", err)
	}
	return &ts, nil
}

// trainingStatus returns the most advanced training status among the nodes.
func trainingStatus(ctx context.Context, cls []*client.Client) (*trainer.Status, error) {
	var best *trainer.Status
	err := errors.New("no node reports training yet")
	for _, cl := range cls {
		ts, e := nodeTraining(ctx, cl, 3*time.Second, 1)
		if e != nil {
			if !errors.Is(e, errNoTraining) && !errors.Is(e, errNoStatus) {
				err = e
			}
			continue
		}
		if best == nil || ts.Epoch > best.Epoch || ts.Accuracy > best.Accuracy {
			best = ts
		}
	}
	if best == nil {
		return nil, err
	}
	return best, nil
}

func printDemoLine(w io.Writer, since time.Duration, st *trainer.Status) {
	var shards []string
	for _, s := range st.Shards {
		shards = append(shards, fmt.Sprintf("shard %d: %d peers %4.0f/s", s.Index, len(s.Peers), s.Throughput))
	}
	loss := "   -  "
	if st.Loss > 0 {
		loss = fmt.Sprintf("%.4f", st.Loss)
	}
	fmt.Fprintf(w, "[%6.1fs] epoch %4d/%d  loss %s  %5.0f samples/s  %s\n",
		since.Seconds(), st.Epoch, st.Epochs, loss, st.SamplesPerS, strings.Join(shards, "  "))
}

// demoEnv is the environment of the demo's processes: GOMAXPROCS, unless
// set, to what each node's share of the machine is (at least its engine
// threads). Five processes on one machine, each with a P per CPU, spend
// about a tenth of their CPU spinning for work and switching (2 CPUs, 4
// nodes: GOMAXPROCS=1 ran the benchmark's demo with 13% less CPU).
func demoEnv(threads, nodes int) []string {
	env := os.Environ()
	if os.Getenv("GOMAXPROCS") != "" {
		return env
	}
	procs := max(threads, runtime.NumCPU()/max(nodes, 1), 1)
	return append(env, "GOMAXPROCS="+strconv.Itoa(procs))
}
