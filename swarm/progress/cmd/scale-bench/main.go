// Command scale-bench simulates one run of many peers in this process
// (swarm/progress/scale) and prints one JSON line per size.
//
//	go run ./swarm/progress/cmd/scale-bench -n 100,300,1000
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/swarm-train/swarm/swarm/progress/scale"
)

func main() {
	sizes := flag.String("n", "100,300,1000", "swarm sizes, comma separated")
	var c scale.Config
	flag.IntVar(&c.Shards, "shards", 10, "shards of the run")
	flag.IntVar(&c.Degree, "degree", 8, "peers each node dials when it starts")
	flag.Float64Var(&c.Budget, "budget", 0, "records/s budget (0: the default)")
	flag.DurationVar(&c.Window, "window", 15*time.Second, "steady-state measurement")
	flag.DurationVar(&c.Change, "change", 100*time.Millisecond, "each node's record changes this often")
	flag.IntVar(&c.Joiners, "joiners", 5, "nodes that join after the start")
	flag.IntVar(&c.Leavers, "leavers", 5, "nodes that leave cleanly")
	flag.IntVar(&c.Kills, "kills", 5, "nodes killed")
	flag.BoolVar(&c.Match, "match", true, "a matchmaking round per shard")
	verbose := flag.Bool("v", false, "progress on stderr")
	prof := flag.String("cpuprofile", "", "write a CPU profile here")
	flag.Parse()
	if *prof != "" {
		f, err := os.Create(*prof)
		if err != nil {
			fmt.Fprintln(os.Stderr, "scale-bench:", err)
			os.Exit(1)
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if *verbose {
		c.Log = func(f string, a ...any) { fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+f+"\n", a...) }
	}
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 {
			fmt.Fprintf(os.Stderr, "scale-bench: bad size %q\n", f)
			os.Exit(2)
		}
		c.N = n
		res, err := scale.Run(context.Background(), c)
		if err != nil {
			fmt.Fprintf(os.Stderr, "scale-bench: %d peers: %v\n", n, err)
			return
		}
		_ = json.NewEncoder(os.Stdout).Encode(res)
	}
}
