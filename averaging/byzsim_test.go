package averaging

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// How large a share of Byzantine holders each aggregation tolerates, in a
// pure simulation: n holders train one logistic regression on synthetic
// data; every step each honest holder sends the gradient of a minibatch of
// its own data, each Byzantine holder sends an attack, and the step is the
// aggregation of what they sent, as one reducer combines one part. The
// table (go test ./averaging -run TestByzantineShare -v) gives test
// accuracy and training loss per aggregation, attack and share f/n.

const (
	simHolders = 24 // divisible by 8 and 3: f/n = 1/8, 1/4, 1/3 are whole
	simDim     = 20
	simTrain   = 4800 // 200 samples per holder
	simTest    = 4000
	simBatch   = 32
	simSteps   = 300
)

type simData struct {
	x [][]float64 // with a constant 1 for the bias
	y []float64   // ±1
}

// simProblem draws a linearly separable-ish problem: labels from a hidden
// weight vector with logistic noise.
func simProblem(seed uint64) (train, test simData) {
	rng := rand.New(rand.NewPCG(seed, 99))
	w := make([]float64, simDim+1)
	for i := range w {
		w[i] = rng.NormFloat64()
	}
	draw := func(n int) simData {
		var d simData
		for range n {
			x := make([]float64, simDim+1)
			for i := range simDim {
				x[i] = rng.NormFloat64()
			}
			x[simDim] = 1
			p := 1 / (1 + math.Exp(-2*dot(w, x)))
			y := -1.0
			if rng.Float64() < p {
				y = 1
			}
			d.x, d.y = append(d.x, x), append(d.y, y)
		}
		return d
	}
	return draw(simTrain), draw(simTest)
}

func dot(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

// gradient of the mean logistic loss over samples idx of d at w.
func (d simData) gradient(w []float64, idx []int) []float64 {
	g := make([]float64, len(w))
	for _, i := range idx {
		m := d.y[i] * dot(w, d.x[i])
		c := -d.y[i] / (1 + math.Exp(m)) / float64(len(idx))
		for k, v := range d.x[i] {
			g[k] += c * v
		}
	}
	return g
}

// eval returns the mean logistic loss and the accuracy of w on d.
func (d simData) eval(w []float64) (loss, acc float64) {
	right := 0
	for i, x := range d.x {
		m := d.y[i] * dot(w, x)
		loss += math.Log1p(math.Exp(-m))
		if m > 0 {
			right++
		}
	}
	return loss / float64(len(d.x)), float64(right) / float64(len(d.x))
}

// A simAttack is what the Byzantine holders send, given their own honest
// gradients (each holder's, in order) and the honest holders' (omniscient
// colluders see them).
type simAttack struct {
	name  string
	extra bool // not one of the goal's attacks: reported only
	send  func(rng *rand.Rand, own, honest [][]float64) [][]float64
}

var simAttacks = []simAttack{
	{"sign-flip ×100", false, func(_ *rand.Rand, own, _ [][]float64) [][]float64 {
		out := make([][]float64, len(own))
		for i, g := range own {
			out[i] = scale64(g, -100)
		}
		return out
	}},
	{"huge norm", false, func(rng *rand.Rand, own, _ [][]float64) [][]float64 {
		out := make([][]float64, len(own))
		for i := range own {
			v := make([]float64, simDim+1)
			for k := range v {
				v[k] = rng.NormFloat64()
			}
			out[i] = scale64(v, 1e6/math.Sqrt(dot(v, v)))
		}
		return out
	}},
	{"constant", false, func(_ *rand.Rand, own, _ [][]float64) [][]float64 {
		out := make([][]float64, len(own))
		for i := range own {
			out[i] = make([]float64, simDim+1)
			for k := range out[i] {
				out[i][k] = 10
			}
		}
		return out
	}},
	// Colluders send one vector together ("a little is enough", Baruch et
	// al. 2019): the honest mean moved z honest standard deviations per
	// coordinate against the descent, z the paper's largest that the
	// median of n values, f of them theirs, does not expose.
	{"colluders (ALIE)", false, func(_ *rand.Rand, own, honest [][]float64) [][]float64 {
		n, f := len(honest)+len(own), len(own)
		return alie(own, honest, math.Sqrt2*math.Erfinv(2*float64(n-(n/2+1-f))/float64(n)-1))
	}},
	// The same, three honest standard deviations out: past what the paper
	// deems hidden, but nearer the honest values than a crude attack.
	{"colluders, z = 1.5", true, func(_ *rand.Rand, own, honest [][]float64) [][]float64 {
		return alie(own, honest, 1.5)
	}},
}

// alie is every colluder's vector: the honest mean moved z standard
// deviations per coordinate against its sign.
func alie(own, honest [][]float64, z float64) [][]float64 {
	mu, sd := make([]float64, simDim+1), make([]float64, simDim+1)
	for _, g := range honest {
		for k, v := range g {
			mu[k] += v / float64(len(honest))
		}
	}
	for _, g := range honest {
		for k, v := range g {
			sd[k] += (v - mu[k]) * (v - mu[k]) / float64(len(honest))
		}
	}
	v := make([]float64, simDim+1)
	for k := range v {
		v[k] = mu[k] - z*math.Sqrt(sd[k])*signOf(mu[k])
	}
	out := make([][]float64, len(own))
	for i := range own {
		out[i] = v
	}
	return out
}

func scale64(v []float64, f float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = f * x
	}
	return out
}

func signOf(x float64) float64 {
	if x < 0 {
		return -1
	}
	return 1
}

// simTrainRun trains with byz Byzantine holders (the last ones), each
// step's gradients combined by a reducer with opts as one part, and
// returns the final training loss and test accuracy.
func simTrainRun(train, test simData, opts reduceOpts, attack simAttack, byz int, seed uint64) (loss, acc float64) {
	rng := rand.New(rand.NewPCG(seed, uint64(byz)))
	w := make([]float64, simDim+1)
	per := simTrain / simHolders
	idx := make([]int, simBatch)
	parts := []span{{0, simDim + 1}}
	t0 := time.Unix(0, 0)
	for step := range simSteps {
		grads := make([][]float64, simHolders)
		for h := range simHolders {
			for b := range idx {
				idx[b] = h*per + rng.IntN(per)
			}
			grads[h] = train.gradient(w, idx)
		}
		honest := simHolders - byz
		if byz > 0 {
			copy(grads[honest:], attack.send(rng, grads[honest:], grads[:honest]))
		}
		xs := make([][]float32, simHolders)
		for h, g := range grads {
			xs[h] = make([]float32, len(g))
			for k, v := range g {
				xs[h][k] = float32(v)
			}
		}
		// Holder 0 (honest) reduces; the liars declare 4 times the samples
		// they would have (a run caps weights at its target batch).
		red := newReducer(0, simHolders, parts, xs[0], simBatch, t0, time.Hour, t0.Add(time.Hour), opts)
		for h := 1; h < simHolders; h++ {
			wt := float64(simBatch)
			if h >= honest {
				wt *= 4
			}
			_ = red.Header(h, wt, t0)
			_ = red.Part(h, 0, xs[h], t0)
		}
		out := red.Ready()[0].Avg
		lr := 0.5 / math.Sqrt(1+float64(step)/50)
		for k := range w {
			w[k] -= lr * float64(out[k])
		}
	}
	loss, _ = train.eval(w)
	_, acc = test.eval(w)
	return loss, acc
}

// TestByzantineShare trains with 0, 1/8, 1/4 and 1/3 of the holders
// Byzantine under every attack and aggregation, and asserts the goal: with
// up to 1 in 4 liars, CenteredClip and the trimmed mean with norm_k 10 end
// within one accuracy point of the clean run under the four attacks of the
// goal (and the mean does not: the attacks bite). Without norm_k neither
// meets it: a quarter of liars each clipped to τ still pull the aggregate
// by about a third of τ, always the same way (the table's rows without
// norm_k); norm_k drops the gross attacks outright. -v prints the table
// (BENCHMARKS.md; -short runs the goal's rows only).
func TestByzantineShare(t *testing.T) {
	train, test := simProblem(1)
	_, cleanAcc := simTrainRun(train, test, reduceOpts{}, simAttack{}, 0, 7)
	shares := []int{simHolders / 8, simHolders / 4, simHolders / 3}
	var tab strings.Builder
	fmt.Fprintf(&tab, "\n| aggregation | attack | f/n = 0 | 1/8 | 1/4 | 1/3 |\n|---|---|---|---|---|---|\n")
	configs := []reduceOpts{{}, {Agg: AggregateCenteredClip}, {Agg: AggregateCenteredClip, NormK: 10},
		{Agg: AggregateTrimmedMean}, {Agg: AggregateTrimmedMean, NormK: 10}}
	if testing.Short() { // the goal's rows and the mean's
		configs = []reduceOpts{{}, {Agg: AggregateCenteredClip, NormK: 10}, {Agg: AggregateTrimmedMean, NormK: 10}}
	}
	for _, opts := range configs {
		name := opts.Agg.String()
		if opts.NormK > 0 {
			name += fmt.Sprintf(", norm_k %g", opts.NormK)
		}
		cleanLoss, clean := simTrainRun(train, test, opts, simAttack{}, 0, 7)
		if !(math.Abs(clean-cleanAcc) <= 0.005) {
			t.Errorf("%s without attackers: accuracy %.4f, the mean's %.4f", name, clean, cleanAcc)
		}
		for _, at := range simAttacks {
			fmt.Fprintf(&tab, "| %s | %s | %.1f%% (%.3f) |", name, at.name, 100*clean, cleanLoss)
			for _, f := range shares {
				loss, acc := simTrainRun(train, test, opts, at, f, 7)
				fmt.Fprintf(&tab, " %.1f%% (%.3g) |", 100*acc, loss)
				goal := opts.NormK > 0 && !at.extra
				if goal && 4*f <= simHolders && !(cleanAcc-acc <= 0.01) {
					t.Errorf("%s, %s, %d of %d Byzantine: accuracy %.4f, clean %.4f (more than 1 point lost)",
						name, at.name, f, simHolders, acc, cleanAcc)
				}
				if opts == (reduceOpts{}) && f == simHolders/8 && at.name == simAttacks[0].name && cleanAcc-acc < 0.05 {
					t.Errorf("mean, %s, %d Byzantine: accuracy %.4f: the attack should bite", at.name, f, acc)
				}
			}
			tab.WriteString("\n")
		}
	}
	t.Logf("test accuracy (training loss) after %d steps, %d holders, batch %d each; clean run (mean) %.1f%%:%s",
		simSteps, simHolders, simBatch, 100*cleanAcc, tab.String())
}
