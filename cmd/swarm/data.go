package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/swarm-train/swarm/internal/atomicfile"
	"github.com/swarm-train/swarm/node/training"
	"github.com/swarm-train/swarm/spec/run"
	"github.com/swarm-train/swarm/swarm/data"
	"github.com/swarm-train/swarm/swarm/dataset"
)

func init() {
	register(&cli.Command{
		Name:  "data",
		Usage: "content-addressed data sets that nodes fetch from each other",
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Usage:     "put data files in the home's cache and print their root CID, for `swarm run init --data-root`",
				ArgsUsage: "FILE...",
				Description: `Cuts the files into chunks addressed by CID, lists them in a root object whose
CID names the data set, and copies files and root object to HOME/data/<root>/,
where 'swarm node' finds them and serves them to the run's peers. Pin the root
in a manifest with 'swarm run init --data-root ROOT'; the files keep their
names (an MNIST-format set needs MNIST's four file names).`,
				Flags: []cli.Flag{
					homeFlag(),
					&cli.IntFlag{Name: "chunk-size", Value: dataset.DefaultChunkSize, Usage: fmt.Sprintf("chunk size in bytes, %d to %d", dataset.MinChunkSize, dataset.MaxChunkSize)},
					&cli.BoolFlag{Name: "json", Usage: "print a JSON object"},
				},
				Action: dataAdd,
			},
			{
				Name:      "prepare",
				Usage:     "cut text files into subword tokens and write a token file, for `swarm run init --tokens`",
				ArgsUsage: "FILE|FOLDER...",
				Description: `Reads the files (a folder: every file under it whose name ends in one of
--ext, in lexical order, hidden folders skipped), cuts each into tokens with
the tokenizer (gpt2: GPT-2's byte-level BPE, compiled into swarm), ends each
file with <|endoftext|>, and writes the token file. Its SHA-256 is what a
manifest pins (swarm run init --tokens FILE). For a Go code model over Go's
own source tree:

  swarm data prepare --tokenizer gpt2 --ext .go $(go env GOROOT)/src -o go.tok`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "tokenizer", Value: run.TokenizerGPT2, Usage: "tokenizer: gpt2 (GPT-2's BPE, 50,257 tokens) or bytes (one token a byte, 257 tokens, for tiny runs)"},
					&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "token file to write (may also follow the files)"},
					&cli.StringFlag{Name: "ext", Usage: "in folders, only files ending in these suffixes, comma-separated (e.g. .go,.md; default: every file)"},
					&cli.BoolFlag{Name: "json", Usage: "print a JSON object"},
				},
				Action: dataPrepare,
			},
		},
	})
}

// DataPrepared is what `swarm data prepare` prints.
type DataPrepared struct {
	Output    string `json:"output"`
	Tokenizer string `json:"tokenizer"`
	Vocab     int    `json:"vocab"`
	Files     int    `json:"files"`
	Bytes     int64  `json:"bytes"`
	Tokens    int    `json:"tokens"`
	SHA256    string `json:"sha256"`
}

func dataPrepare(c *cli.Context) error {
	// The output may follow the files (swarm data prepare FILES... -o OUT),
	// where the flag parser has stopped.
	out := c.String("output")
	var paths []string
	args := c.Args().Slice()
	for i := 0; i < len(args); i++ {
		if a := args[i]; (a == "-o" || a == "--output") && i+1 < len(args) {
			out = args[i+1]
			i++
			continue
		}
		paths = append(paths, args[i])
	}
	if len(paths) == 0 {
		return errors.New("data prepare: name the files or folders to tokenize")
	}
	if out == "" {
		return errors.New("data prepare: name the token file to write with -o")
	}
	tk, err := data.NewTokenizer(c.String("tokenizer"))
	if err != nil {
		return fmt.Errorf("data prepare: --tokenizer: %w", err)
	}
	var exts []string
	for _, e := range strings.Split(c.String("ext"), ",") {
		if e = strings.TrimSpace(e); e != "" {
			exts = append(exts, e)
		}
	}
	files, err := data.CorpusFiles(paths, exts)
	if err != nil {
		return fmt.Errorf("data prepare: %w", err)
	}
	toks, n, err := data.TokenizeFiles(tk, files)
	if err != nil {
		return fmt.Errorf("data prepare: %w", err)
	}
	h := sha256.New()
	err = atomicfile.Write(out, 0o644, func(w io.Writer) error {
		return data.EncodeTokens(io.MultiWriter(w, h), tk.Name(), toks)
	})
	if err != nil {
		return fmt.Errorf("data prepare: %w", err)
	}
	res := DataPrepared{Output: out, Tokenizer: tk.Name(), Vocab: run.TokenizerVocab(tk.Name()), Files: len(files), Bytes: n, Tokens: len(toks), SHA256: hex.EncodeToString(h.Sum(nil))}
	if c.Bool("json") {
		b, _ := json.MarshalIndent(res, "", "  ")
		_, err := fmt.Fprintf(c.App.Writer, "%s\n", b)
		return err
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "wrote\t%s\n", res.Output)
	fmt.Fprintf(tw, "tokens\t%d (%s, vocabulary %d) from %d files, %d bytes (%.2f bytes a token)\n", res.Tokens, res.Tokenizer, res.Vocab, res.Files, res.Bytes, float64(res.Bytes)/float64(max(res.Tokens, 1)))
	fmt.Fprintf(tw, "sha256\t%s\n", res.SHA256)
	fmt.Fprintf(tw, "next\tswarm run init --model llama-tiny --tokens %s\n", res.Output)
	return tw.Flush()
}

// DataAdded is what `swarm data add` prints.
type DataAdded struct {
	Root      string     `json:"root"`
	Dir       string     `json:"dir"`
	ChunkSize int        `json:"chunk_size"`
	Files     []DataFile `json:"files"`
	Bytes     int64      `json:"bytes"`
	Chunks    int        `json:"chunks"`
}

// DataFile is one file of DataAdded.
type DataFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Chunks int    `json:"chunks"`
}

func dataAdd(c *cli.Context) error {
	if c.NArg() == 0 {
		return cli.Exit("swarm data add: name the files to add", 2)
	}
	cs := c.Int("chunk-size")
	if cs < dataset.MinChunkSize || cs > dataset.MaxChunkSize {
		return cli.Exit(fmt.Sprintf("swarm data add: --chunk-size %d: want %d to %d", cs, dataset.MinChunkSize, dataset.MaxChunkSize), 2)
	}
	cache := filepath.Join(c.String("home"), "data")
	r, err := dataset.Add(cache, c.Args().Slice(), cs)
	if err != nil {
		return cli.Exit("swarm data add: "+err.Error(), 1)
	}
	out := DataAdded{Root: r.CID().String(), Dir: dataset.CacheFolder(cache, r.CID()), ChunkSize: r.ChunkSize,
		Files: []DataFile{}, Bytes: r.Size(), Chunks: len(r.Chunks())}
	for _, f := range r.Files {
		out.Files = append(out.Files, DataFile{Name: f.Name, Size: f.Size, Chunks: len(f.Chunks)})
	}
	if c.Bool("json") {
		b, _ := json.MarshalIndent(out, "", "  ")
		_, err := fmt.Fprintf(c.App.Writer, "%s\n", b)
		return err
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "root\t%s\n", out.Root)
	fmt.Fprintf(tw, "folder\t%s\n", out.Dir)
	fmt.Fprintf(tw, "size\t%d bytes in %d chunks of %d bytes\n", out.Bytes, out.Chunks, out.ChunkSize)
	for _, f := range out.Files {
		fmt.Fprintf(tw, "  %s\t%d bytes, %d chunks\n", f.Name, f.Size, f.Chunks)
	}
	fmt.Fprintf(tw, "next\tswarm run init ... --data-root %s\n", out.Root)
	return tw.Flush()
}

// printDataRow renders services.data (the run's data set) as one status
// row; raw may be nil (no data service).
func printDataRow(w io.Writer, raw json.RawMessage) {
	var ds training.DataStatus
	if raw == nil || json.Unmarshal(raw, &ds) != nil || ds.Root == "" {
		return
	}
	line := fmt.Sprintf("%s, %d/%d chunks (%.1f of %.1f MB)", ds.State, ds.Chunks, ds.Total, float64(ds.Bytes)/1e6, float64(ds.Size)/1e6)
	switch {
	case ds.State == "ready" && ds.Source == dataset.SourceSwarm:
		line = fmt.Sprintf("ready, fetched from %d peer(s) in %.1fs", len(ds.Donors), ds.Seconds)
	case ds.State == "ready":
		line = "ready, " + ds.Source + " copy checked against the root"
	}
	if len(ds.Banned) > 0 {
		line += fmt.Sprintf("; %d donor(s) banned for corrupt chunks", len(ds.Banned))
	}
	if ds.Error != "" {
		line += ": " + ds.Error
	}
	fmt.Fprintf(w, "data\t%s (root %s, %s)\n", line, ds.Root, ds.Dir)
}

// localData is the folder holding m's data set for a command that fetches
// nothing (swarm train): with a pinned root, a local copy (dataDir, the
// module cache, the corpus's path) or the home's cache, checked against the
// root; without one, dataDir as given.
func localData(m *run.Manifest, dataDir, home string, log *slog.Logger) (string, error) {
	if m.Dataset.Root == "" {
		return dataDir, nil
	}
	root, err := dataset.ParseCID(m.Dataset.Root)
	if err != nil {
		return "", fmt.Errorf("dataset.root: %w", err)
	}
	opts := dataset.Options{Local: data.LocalCopies(m.Dataset, dataDir), Logger: log}
	if dataDir != "" {
		opts.Dirs = []string{dataDir}
	}
	if home != "" {
		opts.Cache = filepath.Join(home, "data")
	}
	s, err := dataset.Open(root, opts)
	if err != nil {
		return "", err
	}
	if !s.Complete() {
		var names, dirs []string
		for i, set := range opts.Local {
			for _, p := range set {
				if i == 0 {
					names = append(names, filepath.Base(p))
				}
				if d := filepath.Dir(p); !slices.Contains(dirs, d) {
					dirs = append(dirs, d)
				}
			}
		}
		return "", fmt.Errorf("%w: the run's data set (%s; dataset.root %s) is not in %s, or the copies there differ from it; "+
			"--data-dir names a folder with it, and `swarm node --run` fetches it from the run's peers into %s",
			data.ErrNoData, strings.Join(names, ", "), root, strings.Join(append(dirs, s.CacheDir()), ", "), s.CacheDir())
	}
	log.Debug("data set checked against its root", "root", root, "source", s.Source(), "dir", s.Dir())
	return s.Dir(), nil
}
