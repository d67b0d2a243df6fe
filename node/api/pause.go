package api

// The volunteer's pause controls: POST PathPause and PathResume with a
// PauseRequest; both answer the Pause state, which status also carries
// under services.pause.
const (
	PathPause  = "/v1/pause"
	PathResume = "/v1/resume"
)

// PauseRequest is the body of POST /v1/pause and /v1/resume. Rule names the
// pause rule to set or clear; only "manual" (the default when empty) may be
// set by hand: the others follow the node's settings and are refused.
type PauseRequest struct {
	Rule string `json:"rule,omitempty"`
}

// Pause says whether training runs and which rules hold it.
type Pause struct {
	State string `json:"state"` // running or paused
	Holds []Hold `json:"holds"` // empty while running
	// ActiveHours is the daily window of local time training runs in
	// ("22:00-07:00"), empty for all hours.
	ActiveHours string `json:"active_hours,omitempty"`
	// PauseOtherCPUPct is the cpu-busy rule's threshold (0: off).
	PauseOtherCPUPct int `json:"pause_other_cpu_pct,omitempty"`
	// PauseOnInput is the in-use rule's quiet period ("5m0s"), with
	// "(unavailable: why)" where the machine shows no keyboard or mouse
	// counter; empty when off.
	PauseOnInput string `json:"pause_on_input,omitempty"`
}

// Hold is one rule holding training: manual (swarm pause), active-hours,
// cpu-busy, in-use or gpu (the GPU limits), why, and since when (RFC 3339).
type Hold struct {
	Rule   string `json:"rule"`
	Reason string `json:"reason"`
	Since  string `json:"since"`
}
