package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/gpu"
	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/training"
)

// pauseRuleFlags are the volunteer's pause rules beyond the GPU limits:
// a daily window and a busy CPU. swarm pause / resume add the manual rule
// at run time.
func pauseRuleFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "active-hours", Usage: "train only in this daily window of local time, START-END such as 22:00-07:00 (default: all hours)", EnvVars: []string{"SWARM_ACTIVE_HOURS"}},
		&cli.IntFlag{Name: "pause-other-cpu", Usage: "pause while other processes use more than this % of the CPU, all cores together (0: never)", EnvVars: []string{"SWARM_PAUSE_OTHER_CPU"}},
	}
}

// pauseRules parses the pause-rule flags, refusing bad values by flag name.
type pauseRules struct {
	hours gpu.ActiveHours
	cpu   int
}

func parsePauseRules(c *cli.Context) (pauseRules, error) {
	hours, err := gpu.ParseActiveHours(c.String("active-hours"))
	if err != nil {
		return pauseRules{}, fmt.Errorf("--active-hours: %w", err)
	}
	cpu := c.Int("pause-other-cpu")
	if cpu != 0 {
		if _, err := gpu.NewCPUBusy(cpu, 0); err != nil {
			return pauseRules{}, fmt.Errorf("--%w", err)
		}
	}
	return pauseRules{hours, cpu}, nil
}

// apply sets the rules on the training service in cfg (none without training).
func (r pauseRules) apply(cfg *node.Config) {
	for _, s := range cfg.Services {
		if t, ok := s.(*training.Service); ok {
			t.ActiveHours, t.PauseOtherCPUPct = r.hours, r.cpu
		}
	}
}
