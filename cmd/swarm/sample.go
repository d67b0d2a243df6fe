package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/checkpoint"
	"github.com/swarm-train/swarm/swarm/sample"
)

func init() {
	register(&cli.Command{
		Name:  "sample",
		Usage: "print text drawn from a trained language model (native engine)",
		Description: `Loads a run's parameters (--checkpoint: a swarm train checkpoint file or folder;
without it, every shard's newest node checkpoint under --home) and continues
--prompt by -n tokens of the run's tokenizer (characters or GPT-2's subwords).`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "run", Required: true, Usage: "run manifest"},
			&cli.StringFlag{Name: "checkpoint", Usage: "a checkpoint file (.swck) holding every shard, or a folder of them (the newest is taken)"},
			homesFlag("node home whose runs/<run ID>/shard-<k> folders hold the checkpoints (without --checkpoint); repeat it to gather the shards of several nodes"),
			&cli.StringFlag{Name: "prompt", Usage: "text to continue (token runs: default <|endoftext|>)"},
			&cli.IntFlag{Name: "n", Value: 200, Usage: "tokens to draw"},
			&cli.Float64Flag{Name: "temperature", Value: 0.8, Usage: "divides the logits; 0 takes the most likely token"},
			&cli.IntFlag{Name: "top-k", Value: 40, Usage: "draw among the K most likely tokens (0: all)"},
			&cli.Uint64Flag{Name: "seed", Usage: "seed of the draw (default: from the clock)"},
			&cli.IntFlag{Name: "cpu-threads", Aliases: []string{"threads"}, Usage: "native engine threads (0: all cores)", EnvVars: []string{"SWARM_CPU_THREADS"}},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of the text"},
		},
		Action: sampleCmd,
	})
}

// Sampled is what swarm sample --json prints.
type Sampled struct {
	RunID           string  `json:"run_id"`
	Checkpoint      string  `json:"checkpoint"`
	Step            int64   `json:"step"`
	Prompt          string  `json:"prompt"`
	Text            string  `json:"text"`
	Tokens          int     `json:"tokens"`
	Seed            uint64  `json:"seed"`
	Seconds         float64 `json:"seconds"`
	TokensPerSecond float64 `json:"tokens_per_second"`
}

func sampleCmd(c *cli.Context) error {
	m, err := run.Load(c.String("run"))
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	n := c.Int("n")
	if n < 1 || n > 1<<20 {
		return fmt.Errorf("sample: -n %d: want 1 to %d tokens", n, 1<<20)
	}
	prompt := c.String("prompt")
	params, step, from, err := loadParams(c, m)
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	seed := c.Uint64("seed")
	if !c.IsSet("seed") {
		seed = uint64(time.Now().UnixNano())
	}
	opts := sample.Options{Temperature: c.Float64("temperature"), TopK: c.Int("top-k"), Seed: seed}
	asJSON := c.Bool("json")
	w := c.App.Writer
	begin := time.Now()
	var text strings.Builder
	started := false
	err = drawText(m, params, c.Int("cpu-threads"), prompt, n, opts, func(s string) error {
		if !started && !asJSON {
			fmt.Fprint(w, prompt)
		}
		started = true
		text.WriteString(s)
		if !asJSON {
			_, err := fmt.Fprint(w, s)
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	secs := time.Since(begin).Seconds()
	if !asJSON {
		fmt.Fprintln(w)
		return nil
	}
	id, _ := m.ID()
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(Sampled{RunID: id.String(), Checkpoint: from, Step: step, Prompt: prompt, Text: text.String(),
		Tokens: n, Seed: seed, Seconds: secs, TokensPerSecond: float64(n) / secs})
}

// drawText continues prompt by n tokens of m's model with params on the
// native engine, passing each token's text to emit. A prompt the run's
// tokenizer cannot encode is an error naming what it could not; an empty
// prompt starts a token run at <|endoftext|>.
func drawText(m *run.Manifest, params [][]float32, threads int, prompt string, n int, opts sample.Options, emit func(string) error) error {
	codec, err := sample.NewCodec(m)
	if err != nil {
		return err
	}
	var ids []int32
	eot, hasEOT := codec.(interface{ EndOfText() int32 })
	if prompt == "" && hasEOT {
		ids = []int32{eot.EndOfText()} // <|endoftext|>: the start of a document
	} else if prompt == "" {
		return errors.New("--prompt is empty (a character run needs text to continue)")
	} else if ids, err = codec.Encode(prompt); err != nil {
		return fmt.Errorf("--prompt: %w", err)
	}
	model, err := sample.New(m, params, threads)
	if err != nil {
		return err
	}
	defer model.Close()
	_, err = model.Generate(ids, n, opts, func(id int32) error {
		s, err := codec.Decode([]int32{id})
		if err != nil {
			return err
		}
		return emit(s)
	})
	return err
}

// loadParams reads every shard's parameters of m: from --checkpoint (a file
// or a folder of swarm train checkpoints), else from the node checkpoints
// under --home. It returns them with the step and where they came from.
func loadParams(c *cli.Context, m *run.Manifest) ([][]float32, int64, string, error) {
	skip := func(p string, err error) { fmt.Fprintf(c.App.ErrWriter, "skipping %v\n", err) }
	path := c.String("checkpoint")
	if path == "" {
		a, err := checkpoint.AssembleNodeShards(runsDirs(c), m, skip)
		if err != nil {
			return nil, 0, "", fmt.Errorf("%w (or name a checkpoint with --checkpoint)", err)
		}
		return a.Params, a.Step, strings.Join(a.Paths, ", "), nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, 0, "", fmt.Errorf("--checkpoint: %w", err)
	}
	var s *checkpoint.State
	if st.IsDir() {
		d := &checkpoint.Dir{Path: path, OnSkip: skip}
		if s, path, err = d.Latest(); err != nil {
			return nil, 0, "", fmt.Errorf("--checkpoint: %w", err)
		}
	} else if s, err = checkpoint.ReadFile(path); err != nil {
		return nil, 0, "", fmt.Errorf("--checkpoint: %w", err)
	}
	params, err := checkpointParams(m, s)
	if err != nil {
		return nil, 0, "", fmt.Errorf("--checkpoint %s: %w", path, err)
	}
	return params, s.Step, path, nil
}
