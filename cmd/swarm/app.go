package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"
)

// commands is filled by the init functions of the files in this package, one
// file a role (node.go, bootstrap.go, status.go, train.go, ...), so that each
// role is wired in one place and main.go stays short.
var commands []*cli.Command

func register(c *cli.Command) { commands = append(commands, c) }

// version is set at link time by the Makefile (-X main.version=...).
var version = "dev"

func newApp() *cli.App {
	sort.Slice(commands, func(i, j int) bool { return commands[i].Name < commands[j].Name })
	return &cli.App{
		Name:    "swarm",
		Usage:   "pool volunteer computers to train one neural network",
		Version: version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"SWARM_LOG_LEVEL"}},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json", EnvVars: []string{"SWARM_LOG_FORMAT"}},
		},
		Commands:             commands,
		EnableBashCompletion: true,
		// Unknown flags and commands are errors with a non-zero exit.
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(c.App.ErrWriter, "swarm: unknown command %q (see 'swarm help')\n", name)
			os.Exit(2)
		},
	}
}

// newLogger builds the process logger from the global --log-level and
// --log-format flags. It writes to w (stderr for daemons).
func newLogger(c *cli.Context, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(c.String("log-format")) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", c.String("log-format"))
	}
}
