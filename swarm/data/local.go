package data

import (
	"os"
	"path/filepath"

	"github.com/swarm-train/swarm/spec/run"
)

// MNISTRoot is the data set root (swarm/dataset) of the MNIST files as the
// GoMNIST module ships them, in MNISTFiles' order, in 256 KiB chunks:
// 11,594,722 bytes in 47 chunks. `swarm run init` pins it in the manifests
// of mlp-mnist runs; a test rebuilds it from the module's files.
const MNISTRoot = "bafkreie22zfcldnec4xld5pk6jn2e7qcmratgvhqdf6knrug5tmzlwthwa"

// MNISTFiles are the MNIST file names in the order of MNISTRoot.
func MNISTFiles() []string {
	return []string{mnistTrainImages, mnistTrainLabels, mnistTestImages, mnistTestLabels}
}

// LocalCopies lists where this machine may hold a run's data set, each
// candidate as its files' paths in the order of the data set's root: for
// MNIST the four files in dir if given (as MNISTDir, it replaces the other
// places), else in $SWARM_DATA, the folder the build found and the module
// caches; for text the corpus by name in dir, then at the manifest's path
// (or Go's Opticks text). Nothing is read: the caller checks the files
// against the run's root.
func LocalCopies(d run.DatasetSpec, dir string) [][]string {
	var out [][]string
	switch d.Name {
	case run.DatasetMNIST:
		dirs := []string{dir}
		if dir == "" {
			dirs = append([]string{os.Getenv(EnvDataDir)}, mnistCandidates()...)
		}
		seen := map[string]bool{}
		for _, d := range dirs {
			if d == "" || seen[d] {
				continue
			}
			seen[d] = true
			var set []string
			for _, f := range MNISTFiles() {
				set = append(set, filepath.Join(d, f))
			}
			out = append(out, set)
		}
	case run.DatasetText:
		name := CorpusName(d)
		if dir != "" {
			out = append(out, []string{filepath.Join(dir, name)})
		}
		if p, err := CorpusPath(d.Path); err == nil {
			out = append(out, []string{p})
		}
	}
	return out
}

// CorpusName is the file name a text run's corpus has in its data set.
func CorpusName(d run.DatasetSpec) string {
	if d.Path == "" {
		return filepath.Base(DefaultCorpus)
	}
	return filepath.Base(d.Path)
}
