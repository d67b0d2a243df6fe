package torch

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/swarm-train/swarm/engine"
	"github.com/swarm-train/swarm/internal/testutil"
)

// alive reports whether pid runs (a zombie counts as gone).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}

// TestWorkerKilled kills a worker between requests and during one; the
// restarted worker must carry on exactly where the dead one was.
func TestWorkerKilled(t *testing.T) {
	te := newTorch(t, Options{})
	m := smallGPT(2, "adamw")
	ref, vic := newPipeline(t, te, m), newPipeline(t, te, m)
	step := func(p pipeline) {
		for i := range p {
			if err := p[i].Step(1e-2, 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Step 0 on both, so the replayed state is not the initial one.
	for _, p := range []pipeline{ref, vic} {
		p.trainStep(t, engine.RandomBatch(m, 2, 1))
		step(p)
		for _, s := range p {
			s.ZeroGrad()
		}
	}
	// One micro-batch done, then the last shard's worker is killed between
	// requests: the next micro-batch must find it dead, restart it and replay.
	b1, b2 := engine.RandomBatch(m, 2, 2), engine.RandomBatch(m, 2, 3)
	ref.trainStep(t, b1)
	vic.trainStep(t, b1)
	victim := vic[1].(*Shard)
	pid := victim.PID()
	if err := victim.killWorker(); err != nil {
		t.Fatal(err)
	}
	compare(t, "after kill", vic.trainStep(t, b2), ref.trainStep(t, b2), 1e-6)
	if victim.Restarts() != 1 || victim.PID() == pid {
		t.Fatalf("restarts %d, pid %d (was %d)", victim.Restarts(), victim.PID(), pid)
	}
	testutil.Eventually(t, 5*time.Second, testutil.Says("the killed worker gone"), func() bool { return !alive(pid) })

	// Now during a Step: the worker is stopped, the Step sent, and the worker killed.
	pid = victim.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- vic[1].Step(1e-2, 1) }()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("step across a killed worker: %v", err)
	}
	if err := vic[0].Step(1e-2, 1); err != nil {
		t.Fatal(err)
	}
	step(ref)
	comparePipelines(t, "after kill mid-step", vic, ref, 1e-6)
	if victim.Restarts() != 2 {
		t.Errorf("restarts %d, want 2", victim.Restarts())
	}
	// And the next step is right too.
	b3 := engine.RandomBatch(m, 2, 4)
	for _, p := range []pipeline{ref, vic} {
		for _, s := range p {
			s.ZeroGrad()
		}
	}
	compare(t, "next step", vic.trainStep(t, b3), ref.trainStep(t, b3), 1e-6)
	step(ref)
	step(vic)
	comparePipelines(t, "next step", vic, ref, 1e-6)
}

// TestWorkerHang stops a worker (SIGSTOP): the request's deadline passes, the
// worker is killed and replaced, and the answer is still right.
func TestWorkerHang(t *testing.T) {
	te := newTorch(t, Options{RequestTimeout: 4 * time.Second})
	m := smallMLP(1, "sgd")
	ref, vic := newPipeline(t, te, m), newPipeline(t, te, m)
	b1, b2 := engine.RandomBatch(m, 4, 1), engine.RandomBatch(m, 4, 2)
	ref.trainStep(t, b1)
	vic.trainStep(t, b1)
	victim := vic[0].(*Shard)
	pid := victim.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	compare(t, "after hang", vic.trainStep(t, b2), ref.trainStep(t, b2), 1e-6)
	if took := time.Since(start); took < 4*time.Second {
		t.Errorf("answered in %v, before the 4s deadline, from a stopped worker?", took)
	}
	if victim.Restarts() != 1 {
		t.Errorf("restarts %d, want 1", victim.Restarts())
	}
	testutil.Eventually(t, 5*time.Second, testutil.Says("the killed worker gone"), func() bool { return !alive(pid) })
	comparePipelines(t, "after hang", vic, ref, 1e-6)
}

// TestRestartLimit: a worker that keeps dying makes calls fail with ErrWorkerDied.
func TestRestartLimit(t *testing.T) {
	te := newTorch(t, Options{MaxRestarts: 1})
	m := smallMLP(1, "sgd")
	p := newPipeline(t, te, m)
	s := p[0].(*Shard)
	b := engine.RandomBatch(m, 2, 1)
	for i := range 2 {
		if err := s.killWorker(); err != nil {
			t.Fatal(err)
		}
		_, _, _, err := s.Forward(b, nil, false)
		if i == 0 && err != nil {
			t.Fatalf("first restart: %v", err)
		}
		if i == 1 && !errors.Is(err, ErrWorkerDied) {
			t.Fatalf("second death: %v, want ErrWorkerDied", err)
		}
	}
}

// TestCloseStopsWorkers: Close of the engine leaves no worker running.
func TestCloseStopsWorkers(t *testing.T) {
	needTorch(t)
	e, err := New(Options{Device: "cpu", Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	m := smallMLP(2, "adamw")
	var pids []int
	for i := range m.Shards {
		s, err := e.NewShard(m, i)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, s.(*Shard).PID())
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("worker %d survives Close", pid)
		}
	}
	if _, err := os.Stat(e.script); !os.IsNotExist(err) {
		t.Errorf("worker script left behind: %v", err)
	}
	if _, err := e.NewShard(m, 0); err == nil {
		t.Error("NewShard after Close succeeded")
	}
}

// TestNodeDeathKillsWorker runs a node process (this test binary) that starts
// a worker, SIGKILLs the node, and waits for the worker to go.
func TestNodeDeathKillsWorker(t *testing.T) {
	if os.Getenv("SWARM_TORCH_CHILD") == "1" {
		e, err := New(Options{Device: "cpu", Threads: 1})
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		s, err := e.NewShard(smallMLP(1, "sgd"), 0)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println("pid", s.(*Shard).PID())
		select {}
	}
	needTorch(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestNodeDeathKillsWorker$", "-test.v=false")
	cmd.Env = append(os.Environ(), "SWARM_TORCH_CHILD=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	pid := 0
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "pid" {
			pid, _ = strconv.Atoi(f[1])
			break
		} else if len(f) > 0 && f[0] == "error" {
			t.Fatal(sc.Text())
		}
	}
	if pid == 0 || !alive(pid) {
		t.Fatalf("node reported no live worker (pid %d)", pid)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	testutil.Eventually(t, 10*time.Second, testutil.Says("the killed worker gone"), func() bool { return !alive(pid) })
}

// TestMissingPython: no interpreter or no torch is ErrUnavailable with a clear message.
func TestMissingPython(t *testing.T) {
	_, err := New(Options{Python: "/nonexistent/python3"})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "/nonexistent/python3") {
		t.Errorf("missing interpreter: %v", err)
	}
	// An interpreter without torch: /bin/sh fails on the probe script.
	_, err = New(Options{Python: "/bin/false"})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "cannot import torch") {
		t.Errorf("interpreter without torch: %v", err)
	}
	var _ engine.Engine = (*Engine)(nil)
}
