package torch

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/swarm-train/swarm/engine"
)

// proc is one running worker process and the two pipes to it.
type proc struct {
	cmd    *exec.Cmd
	toW    *os.File // requests (the worker's fd 3)
	fromW  *os.File // replies (the worker's fd 4)
	rd     *bufio.Reader
	nextID uint32
	exited chan struct{} // closed when Wait returned
	stderr *tailBuffer
}

// ErrWorkerDied: the worker process exited or stopped answering.
var ErrWorkerDied = errors.New("torch: worker died")

// WorkerError is an error the worker reported for one request (a bad shape,
// an unknown tape, a CUDA error): the process is healthy and is kept.
type WorkerError struct {
	Msg  string
	Kind string // "nonfinite", "tape", "oom" or empty
}

// ErrOutOfMemory: the GPU ran out of memory for a request; the worker is
// kept and says which micro-batch size to try.
var ErrOutOfMemory = errors.New("torch: GPU out of memory")

func (e *WorkerError) Error() string { return "torch worker: " + e.Msg }

// Unwrap maps the worker's error kinds onto the engine's errors.
func (e *WorkerError) Unwrap() error {
	switch e.Kind {
	case "nonfinite":
		return engine.ErrNonFinite
	case "tape":
		return engine.ErrTape
	case "oom":
		return ErrOutOfMemory
	}
	return nil
}

// startProc starts python on script with the request/reply pipes as fds 3/4.
func startProc(python, script string, env []string, log *slog.Logger) (*proc, error) {
	reqR, reqW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		reqR.Close()
		reqW.Close()
		return nil, err
	}
	cmd := exec.Command(python, "-u", script)
	cmd.ExtraFiles = []*os.File{reqR, repW}
	cmd.Env = append(append(workerEnv(), os.Environ()...), env...) // later entries win
	tail := &tailBuffer{max: 8 << 10, log: log}
	cmd.Stderr = tail
	cmd.Stdout = tail
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		reqR.Close()
		reqW.Close()
		repR.Close()
		repW.Close()
		return nil, fmt.Errorf("start %s: %w", python, err)
	}
	// The child holds its own copies; closing ours makes a dead child read as EOF.
	reqR.Close()
	repW.Close()
	p := &proc{cmd: cmd, toW: reqW, fromW: repR, rd: bufio.NewReaderSize(repR, 1<<20), exited: make(chan struct{}), stderr: tail}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// workerEnv is the worker's default environment, under the node's own and
// Options.Env. OpenMP threads that wait passively instead of spinning: on a
// machine with other work (a volunteer's), spinning threads that lose their
// core stall every parallel operation for a scheduler tick, which made
// small shards many times slower.
func workerEnv() []string {
	return []string{"OMP_WAIT_POLICY=PASSIVE"}
}

// pid is the worker's process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// roundTrip sends one request and waits for its reply until timeout. A
// transport failure (exit, timeout, garbage) returns an error wrapping
// ErrWorkerDied; the caller must kill the process. An error reply returns a
// *WorkerError.
func (p *proc) roundTrip(typ uint16, meta any, tensors []tensor, timeout time.Duration) (*frame, error) {
	p.nextID++
	id := p.nextID
	deadline := time.Now().Add(timeout)
	_ = p.toW.SetWriteDeadline(deadline)
	if err := encodeFrame(p.toW, typ, id, meta, tensors); err != nil {
		if errors.Is(err, ErrProtocol) {
			return nil, err
		}
		return nil, p.died("send", err)
	}
	_ = p.fromW.SetReadDeadline(deadline)
	f, err := readFrame(p.rd)
	if err != nil {
		return nil, p.died("receive", err)
	}
	if f.ID != id {
		return nil, p.died("receive", fmt.Errorf("reply to request %d, want %d", f.ID, id))
	}
	switch f.Type {
	case msgOK:
		return f, nil
	case msgError:
		return nil, &WorkerError{Msg: f.metaString("error"), Kind: f.metaString("kind")}
	default:
		return nil, p.died("receive", fmt.Errorf("unexpected reply type %d", f.Type))
	}
}

func (p *proc) died(op string, err error) error {
	msg := ""
	select {
	case <-p.exited:
		msg = fmt.Sprintf(" (exited: %s)", p.cmd.ProcessState)
	default:
		if errors.Is(err, os.ErrDeadlineExceeded) {
			msg = " (no reply before the deadline)"
		}
	}
	if t := strings.TrimSpace(p.stderr.String()); t != "" {
		msg += "; stderr: " + lastLines(t, 5)
	}
	return fmt.Errorf("%w: %s: %v%s", ErrWorkerDied, op, err, msg)
}

// kill stops the process at once and reaps it.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
	p.toW.Close()
	p.fromW.Close()
}

// shutdown asks the worker to exit, and kills it if it has not within grace.
func (p *proc) shutdown(grace time.Duration) {
	_, _ = p.roundTrip(msgShutdown, nil, nil, grace)
	select {
	case <-p.exited:
	case <-time.After(grace):
	}
	p.kill()
}

// tailBuffer keeps the last max bytes the worker wrote to stderr and logs
// each line at debug level.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
	log *slog.Logger
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	if t.log != nil {
		for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
			t.log.Debug("torch worker", "stderr", line)
		}
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
