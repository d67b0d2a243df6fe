package client

import (
	"context"
	"errors"
	"net/http"
	"net/url"

	"github.com/swarm-train/swarm/node/api"
)

// Pause holds the node's training by the manual rule (it stays in the
// swarm, as paused) until Resume.
func (c *Client) Pause(ctx context.Context) (*api.Pause, error) {
	var p api.Pause
	return &p, c.do(ctx, http.MethodPost, api.PathPause, api.PauseRequest{Rule: "manual"}, &p)
}

// Resume clears the manual rule; other rules may still hold training.
func (c *Client) Resume(ctx context.Context) (*api.Pause, error) {
	var p api.Pause
	return &p, c.do(ctx, http.MethodPost, api.PathResume, api.PauseRequest{Rule: "manual"}, &p)
}

// ErrNoBrowserURL says that the daemon's API is on a unix socket, which a
// browser cannot open.
var ErrNoBrowserURL = errors.New("the control API listens on a unix socket, which a browser cannot open; start the daemon with --api-listen 127.0.0.1:PORT for the dashboard")

// DashboardURL is the address that opens the daemon's dashboard in a
// browser: it carries the token once (the API turns it into a cookie).
func (c *Client) DashboardURL() (string, error) {
	if c.base == "http://unix" {
		return "", ErrNoBrowserURL
	}
	return c.base + "/ui/?token=" + url.QueryEscape(c.token), nil
}
