package main

import (
	"fmt"
	"time"

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
		&cli.DurationFlag{Name: "pause-on-input", Usage: "pause while the machine is in use: keyboard or mouse input within this period, such as 5m (0: never; Linux, PS/2 and laptop input devices)", EnvVars: []string{"SWARM_PAUSE_ON_INPUT"}},
	}
}

// pauseRules are the volunteer's pause rules: the config file's fields
// (checked when it was loaded), each overridden by its flag, bad values
// refused by flag name.
type pauseRules struct {
	hours gpu.ActiveHours
	cpu   int
	input time.Duration
}

func parsePauseRules(c *cli.Context, cfg node.Config) (pauseRules, error) {
	hoursText := cfg.ActiveHours
	if c.IsSet("active-hours") {
		hoursText = c.String("active-hours")
	}
	hours, err := gpu.ParseActiveHours(hoursText)
	if err != nil {
		return pauseRules{}, fmt.Errorf("--active-hours: %w", err)
	}
	cpu := cfg.PauseOtherCPUPct
	if c.IsSet("pause-other-cpu") {
		cpu = c.Int("pause-other-cpu")
	}
	if cpu != 0 {
		if _, err := gpu.NewCPUBusy(cpu, 0); err != nil {
			return pauseRules{}, fmt.Errorf("--%w", err)
		}
	}
	var input time.Duration
	if cfg.PauseOnInput != "" {
		if input, err = time.ParseDuration(cfg.PauseOnInput); err != nil {
			return pauseRules{}, fmt.Errorf("config pause_on_input: %w", err)
		}
	}
	if c.IsSet("pause-on-input") {
		input = c.Duration("pause-on-input")
	}
	if input != 0 {
		if _, err := gpu.NewInputIdle(input); err != nil {
			return pauseRules{}, fmt.Errorf("--%w", err)
		}
	}
	return pauseRules{hours, cpu, input}, nil
}

// apply sets the rules on the training service in cfg (none without training).
func (r pauseRules) apply(cfg *node.Config) {
	for _, s := range cfg.Services {
		if t, ok := s.(*training.Service); ok {
			t.ActiveHours, t.PauseOtherCPUPct, t.PauseOnInput = r.hours, r.cpu, r.input
		}
	}
}
