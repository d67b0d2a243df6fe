package training

import (
	"testing"

	"go.uber.org/goleak"
)

// The service starts the trainer, the governor and the pause-rule loops:
// none may outlive Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
