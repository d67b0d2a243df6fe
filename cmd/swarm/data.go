package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

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
		},
	})
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
