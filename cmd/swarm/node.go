package main

import (
	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/node"
	"github.com/swarm-train/swarm/node/training"
	"github.com/swarm-train/swarm/spec/run"
)

func init() {
	register(&cli.Command{
		Name:  "node",
		Usage: "run the volunteer daemon: join the swarm and find the peers of a run",
		Description: `Starts a libp2p host (TCP and QUIC), joins swarm's DHT through the bootstrap peers,
announces this node for its run and finds the run's other peers through the DHT.
The home directory keeps the identity and config.json; 'swarm status' talks to the
daemon through the control API whose address it writes to HOME/api.`,
		Flags: append(append(daemonFlags(),
			&cli.StringFlag{Name: "run-name", Usage: "name of the run to join when no --manifest is given (placeholder run ID: the name's CID)", EnvVars: []string{"SWARM_RUN_NAME"}},
			&cli.StringFlag{Name: "manifest", Aliases: []string{"run"}, Usage: "run manifest file; the run ID is its CID, and the node trains its share of the run", EnvVars: []string{"SWARM_MANIFEST"}},
			tokenFlag(),
			&cli.BoolFlag{Name: "relay-service", Usage: "also act as a circuit relay for peers behind NAT", EnvVars: []string{"SWARM_RELAY_SERVICE"}},
			&cli.BoolFlag{Name: "relay-training", Usage: "act as a training relay for this run: peers that cannot punch a direct connection train through this node, within --relay-mbps, --relay-gb-per-day and --relay-circuit-mb (needs a public address)", EnvVars: []string{"SWARM_RELAY_TRAINING"}},
			&cli.Float64Flag{Name: "relay-mbps", Usage: "training relay: rate cap, all circuits together, in Mbit/s (default 100)", EnvVars: []string{"SWARM_RELAY_MBPS"}},
			&cli.Float64Flag{Name: "relay-gb-per-day", Usage: "training relay: what it relays per UTC day, in GB, before it closes circuits and refuses new ones (default 50)", EnvVars: []string{"SWARM_RELAY_GB_PER_DAY"}},
			&cli.IntFlag{Name: "relay-circuit-mb", Usage: "training relay: what one circuit carries in each direction, in MiB, before it is closed (default 1024)", EnvVars: []string{"SWARM_RELAY_CIRCUIT_MB"}},
		), append(append(trainingFlags(), gpuFlags()...), pauseRuleFlags()...)...),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return cli.Exit("swarm node: unexpected arguments: "+c.Args().First(), 2)
			}
			log, err := newLogger(c, c.App.ErrWriter)
			if err != nil {
				return cli.Exit(err.Error(), 2)
			}
			cfg, err := daemonConfig(c, node.RoleNode)
			if err != nil {
				return cli.Exit("swarm node: "+err.Error(), 1)
			}
			if path := c.String("manifest"); path != "" {
				m, err := run.Load(path)
				if err != nil {
					return cli.Exit("swarm node: --manifest: "+err.Error(), 1)
				}
				if cfg.RunID, err = m.ID(); err != nil {
					return cli.Exit("swarm node: --manifest: "+err.Error(), 1)
				}
				cfg.RunName = m.Name
				if err := applyAdmission(&cfg, m); err != nil {
					return cli.Exit("swarm node: "+err.Error(), 1)
				}
				rules, err := parsePauseRules(c, cfg)
				if err != nil {
					return cli.Exit("swarm node: "+err.Error(), 2)
				}
				data := &training.Data{Manifest: m, DataDir: c.String("data-dir"), FaultCorrupt: c.Bool("fault-data")}
				cfg.Services = append(cfg.Services, data)
				if err := attachTraining(c, &cfg, m, data, log); err != nil {
					return cli.Exit("swarm node: "+err.Error(), 1)
				}
				rules.apply(&cfg)
			}
			n, err := node.New(cfg, log)
			if err != nil {
				return cli.Exit("swarm node: "+err.Error(), 1)
			}
			if err := runDaemon(n, nil); err != nil {
				return cli.Exit("swarm node: "+err.Error(), 1)
			}
			return nil
		},
	})
}
