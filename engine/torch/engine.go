// Package torch is the PyTorch engine: it implements engine with a Python
// worker process per shard, on CUDA when the worker's PyTorch sees a GPU and on
// the CPU otherwise.
//
// The worker's source (worker.py) is embedded in the binary and written out
// when the engine starts. The node talks to it over two pipes with a small
// framed protocol (protocol.go); tensors cross as flat little-endian float32
// buffers in the shared layout (run.Manifest.Layout), so its parameters,
// gradients and optimizer state are interchangeable with engine/native's.
//
// A shard's parameters, gradients and optimizer state live in the worker (on
// the GPU); the node's copies are fetched only when a caller asks for them
// (Params, Grads, OptState) after the worker changed them, and what callers
// write into those copies goes back at the next call into the shard (only
// buffers whose contents changed, found by hashing, cross the pipe). A slice
// kept from before a Step or Backward is refreshed by the next Params,
// Grads or OptState call, not by the Step itself. For
// crash safety the node keeps a snapshot of the whole state, taken at most
// every Options.SnapshotEvery steps or Options.SnapshotInterval (sooner when
// the log would pass Options.MaxLogBytes), and a log of the requests since:
// micro-batches, output gradients, steps with their learning rate and scale,
// ZeroGrad, written buffers. A worker that exits, or does not answer a
// request before its deadline, is killed, restarted, given the snapshot, and
// replays the log to exactly the state before the failure, after which the
// failed request is retried: callers see at most a slower call. Workers die
// with the node (PR_SET_PDEATHSIG on Linux, and the worker exits when its
// request pipe closes) and on Close.
package torch

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/atomicfile"
	"github.com/swarm-train/swarm/spec/run"
)

//go:embed worker.py
var workerSource []byte

// DefaultPython is the interpreter the worker runs under unless Options.Python says otherwise.
const DefaultPython = "/usr/bin/python3"

// ErrUnavailable: python3 or PyTorch is missing; the caller should use the native engine.
var ErrUnavailable = errors.New("torch: PyTorch engine unavailable")

// Options configure the engine. The zero value is usable.
type Options struct {
	// Python is the interpreter (default /usr/bin/python3).
	Python string
	// Device is "auto" (CUDA when available, else CPU), "cpu" or "cuda".
	Device string
	// Threads caps the worker's CPU threads (torch.set_num_threads); 0 leaves PyTorch's default.
	Threads int
	// MaxMemoryMiB caps the worker's CUDA memory (0: no cap).
	MaxMemoryMiB int
	// TF32 allows TensorFloat-32 matrix products on CUDA (faster, ~1e-3
	// relative error); precision bf16 allows them always.
	TF32 bool
	// Precision is "auto" (default: bf16 on CUDA, fp32 on the CPU), "fp32"
	// or "bf16": the forward under bf16 autocast with the float32 buffers as
	// master weights and a float32 optimizer (CUDA only).
	Precision string
	// Compile runs the model through torch.compile (PyTorch 2.0 and later;
	// ignored before).
	Compile bool
	// CheckpointActivations keeps only each transformer block's input in a
	// training forward and recomputes the block in the backward: less
	// memory for the larger presets, about a third more compute.
	CheckpointActivations bool
	// ManualAttention uses the explicit softmax attention even where torch
	// has scaled_dot_product_attention.
	ManualAttention bool
	// DeferLoss keeps training losses on the device (engine.LossTaker) on the
	// CPU too; on CUDA they always are.
	DeferLoss bool
	// RequestTimeout is the deadline of one request (default 2 minutes); a
	// worker past it is treated as hung.
	RequestTimeout time.Duration
	// StartTimeout bounds a worker's start and initialisation (default 2 minutes).
	StartTimeout time.Duration
	// MaxRestarts is how many times one shard's worker may be restarted
	// (default 5); after that, calls fail.
	MaxRestarts int
	// SnapshotEvery and SnapshotInterval: after a Step, the node copies the
	// worker's whole state (4× the parameter bytes with AdamW) if this many
	// steps (default 50) or this much time (default 60 s) passed since the
	// last copy. A restart replays the requests since. SnapshotEvery 1 copies
	// after every step.
	SnapshotEvery    int
	SnapshotInterval time.Duration
	// MaxLogBytes caps the tensors held in the replay log (default 256 MiB);
	// a log that would grow past it triggers a snapshot at once.
	MaxLogBytes int64
	// Env is added to the worker's environment (e.g. CUDA_VISIBLE_DEVICES=1).
	Env []string
	// Logger receives restarts and the worker's stderr (debug).
	Logger *slog.Logger
}

func (o *Options) fill() error {
	if o.Python == "" {
		o.Python = DefaultPython
	}
	switch o.Device {
	case "":
		o.Device = "auto"
	case "auto", "cpu", "cuda":
	default:
		return fmt.Errorf("torch: device %q: want auto, cpu or cuda", o.Device)
	}
	switch o.Precision {
	case "":
		o.Precision = "auto"
	case "auto", "fp32", "bf16":
	default:
		return fmt.Errorf("torch: precision %q: want auto, fp32 or bf16", o.Precision)
	}
	if o.Precision == "bf16" && o.Device == "cpu" {
		return errors.New("torch: precision bf16 needs CUDA (device cpu): use fp32 or auto")
	}
	if o.MaxMemoryMiB < 0 {
		return fmt.Errorf("torch: max memory %d MiB must not be negative", o.MaxMemoryMiB)
	}
	if o.Threads < 0 {
		return fmt.Errorf("torch: threads %d must not be negative", o.Threads)
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 2 * time.Minute
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 2 * time.Minute
	}
	if o.MaxRestarts <= 0 {
		o.MaxRestarts = 5
	}
	if o.SnapshotEvery <= 0 {
		o.SnapshotEvery = 50
	}
	if o.SnapshotInterval <= 0 {
		o.SnapshotInterval = time.Minute
	}
	if o.MaxLogBytes <= 0 {
		o.MaxLogBytes = 256 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Info is what Probe found about the interpreter's PyTorch.
type Info struct {
	Python      string   `json:"python"`
	Torch       string   `json:"torch"`
	CUDA        bool     `json:"cuda"`
	CUDAVersion string   `json:"cuda_version,omitempty"`
	Devices     []string `json:"devices,omitempty"`
}

const probeScript = `import json, torch
d = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "cuda_version": torch.version.cuda or ""}
d["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if d["cuda"] else []
print(json.dumps(d))`

// Probe runs python to find PyTorch and whether it sees CUDA. Errors wrap
// ErrUnavailable and say what to install.
func Probe(ctx context.Context, python string) (Info, error) {
	if python == "" {
		python = DefaultPython
	}
	info := Info{Python: python}
	if _, err := exec.LookPath(python); err != nil {
		return info, fmt.Errorf("%w: no python interpreter at %s (install python3, or pass its path)", ErrUnavailable, python)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-c", probeScript).Output()
	if err != nil {
		msg := err.Error()
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			msg = lastLines(strings.TrimSpace(string(ee.Stderr)), 1)
		}
		return info, fmt.Errorf("%w: %s cannot import torch (install python3-torch or `pip install torch`): %s", ErrUnavailable, python, msg)
	}
	if err := jsonUnmarshalLastLine(out, &info); err != nil {
		return info, fmt.Errorf("%w: unreadable probe output from %s: %v", ErrUnavailable, python, err)
	}
	info.Python = python
	return info, nil
}

// Engine starts one worker process per shard.
type Engine struct {
	opts   Options
	info   Info
	dir    string
	script string

	mu     sync.Mutex
	shards map[*Shard]struct{}
	closed bool
}

var _ engine.Engine = (*Engine)(nil)

// New probes the interpreter and writes the worker script out. Without python3
// or PyTorch it returns an error wrapping ErrUnavailable.
func New(opts Options) (*Engine, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	info, err := Probe(context.Background(), opts.Python)
	if err != nil {
		return nil, err
	}
	if opts.Device == "cuda" && !info.CUDA {
		return nil, fmt.Errorf("%w: device cuda requested but PyTorch %s at %s sees no CUDA device", ErrUnavailable, info.Torch, opts.Python)
	}
	dir, err := os.MkdirTemp("", "swarm-torch-")
	if err != nil {
		return nil, fmt.Errorf("torch: worker directory: %w", err)
	}
	sum := sha256.Sum256(workerSource)
	script := filepath.Join(dir, "worker-"+hex.EncodeToString(sum[:6])+".py")
	if err := atomicfile.WriteFile(script, workerSource, 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("torch: write worker: %w", err)
	}
	return &Engine{opts: opts, info: info, dir: dir, script: script, shards: map[*Shard]struct{}{}}, nil
}

// Info is what the probe found.
func (e *Engine) Info() Info { return e.info }

// Device is "cuda" or "cpu": where the shards will run.
func (e *Engine) Device() string {
	if e.opts.Device == "cpu" || (e.opts.Device == "auto" && !e.info.CUDA) {
		return "cpu"
	}
	return "cuda"
}

// Name is "torch-cuda" or "torch-cpu".
func (e *Engine) Name() string { return "torch-" + e.Device() }

// NewShard starts a worker for shard index of the run and loads the run's
// initial parameters into it.
func (e *Engine) NewShard(m *run.Manifest, index int) (engine.Shard, error) {
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return nil, errors.New("torch: engine closed")
	}
	s, err := newShard(e, m, index)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		s.Close()
		return nil, errors.New("torch: engine closed")
	}
	e.shards[s] = struct{}{}
	return s, nil
}

func (e *Engine) forget(s *Shard) {
	e.mu.Lock()
	delete(e.shards, s)
	e.mu.Unlock()
}

// Close stops every shard's worker and removes the written-out script. It is idempotent.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	shards := make([]*Shard, 0, len(e.shards))
	for s := range e.shards {
		shards = append(shards, s)
	}
	e.mu.Unlock()
	for _, s := range shards {
		s.Close()
	}
	return os.RemoveAll(e.dir)
}
