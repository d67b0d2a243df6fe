// Command swarm is the one binary of the swarm project: a volunteer node, a
// public bootstrap node, and the tools to inspect and drive them.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "swarm:", err)
		os.Exit(1)
	}
}
