package node

// Who may drive the control API. A web page in the volunteer's browser can
// send requests to 127.0.0.1 (a form posting text/plain, or a script on a
// name that an attacker re-points at 127.0.0.1: DNS rebinding), so every
// request passes three checks before it reaches an endpoint:
//
//   - the Host header names a loopback address or localhost (403);
//   - a browser's Origin, if any, is the API's own (403);
//   - it carries the home's token (401), except /metrics when
//     Config.MetricsWithoutToken is set.
//
// Mutating endpoints further want Content-Type: application/json (415),
// which no form can send without a CORS preflight that the Origin check
// refuses.

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/swarm-train/swarm/node/api"
)

// apiTokenBytes is the token's entropy; the file holds it hex-encoded.
const apiTokenBytes = 32

// ErrTokenPermissions says that the API token file can be read by users
// other than its owner; the daemon refuses to start with it.
var ErrTokenPermissions = errors.New("readable by group or others")

// APIToken is the token the control API wants in "Authorization: Bearer",
// empty when the node serves no API. A node with a home keeps it in
// home/api-token; an ephemeral node makes one in memory, and embedders and
// tests read it here.
func (n *Node) APIToken() string { return n.apiToken }

// loadOrCreateAPIToken returns the token in home/api-token, creating it
// (mode 0600) on first start, or a fresh in-memory token when home is empty.
func loadOrCreateAPIToken(home string) (string, error) {
	if home == "" {
		return newAPIToken()
	}
	path := filepath.Join(home, api.TokenFile)
	tok, err := readAPIToken(path)
	if !errors.Is(err, os.ErrNotExist) {
		return tok, err
	}
	if tok, err = newAPIToken(); err != nil {
		return "", err
	}
	if err := writeFileExclusive(path, []byte(tok+"\n"), 0o600); err != nil {
		if errors.Is(err, os.ErrExist) { // created by someone else meanwhile
			return readAPIToken(path)
		}
		return "", fmt.Errorf("create API token: %w", err)
	}
	return tok, nil
}

func newAPIToken() (string, error) {
	b := make([]byte, apiTokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate API token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// readAPIToken reads and checks a token file. A missing file is an error
// wrapping os.ErrNotExist.
func readAPIToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read API token %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("read API token %s: %w", path, err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("API token %s: %w (mode %04o); run chmod 600 %s", path, ErrTokenPermissions, fi.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<10))
	if err != nil {
		return "", fmt.Errorf("read API token %s: %w", path, err)
	}
	tok := strings.TrimSpace(string(data))
	if !validAPIToken(tok) {
		return "", fmt.Errorf("API token %s: %w: want %d hex digits (delete the file to make a new token)", path, ErrCorruptFile, 2*apiTokenBytes)
	}
	return tok, nil
}

func validAPIToken(s string) bool {
	if len(s) != 2*apiTokenBytes {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// guardAPI runs the Host, Origin and token checks before next.
func (n *Node) guardAPI(next http.Handler) http.Handler {
	unixSocket := strings.HasPrefix(n.apiURL, "unix:")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackHost(r.Host, unixSocket) {
			writeError(w, http.StatusForbidden, fmt.Errorf("Host %.80q refused: the control API answers only to localhost or a loopback address", r.Host))
			return
		}
		if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r.Host) {
			writeError(w, http.StatusForbidden, fmt.Errorf("Origin %.80q refused: no cross-site requests to the control API", o))
			return
		}
		if s := r.Header.Get("Sec-Fetch-Site"); s == "cross-site" || s == "same-site" {
			writeError(w, http.StatusForbidden, fmt.Errorf("Sec-Fetch-Site %q refused: no cross-site requests to the control API", s))
			return
		}
		if n.cfg.MetricsWithoutToken && r.URL.Path == api.PathMetrics {
			next.ServeHTTP(w, r)
			return
		}
		tok, fromQuery, err := requestToken(r)
		if err == nil && subtle.ConstantTimeCompare([]byte(tok), []byte(n.apiToken)) != 1 {
			err = errors.New("wrong API token")
		}
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="swarm"`)
			writeError(w, http.StatusUnauthorized, err)
			return
		}
		if fromQuery {
			// A browser opened a link with ?token=: keep the token in a
			// cookie and take it out of the address bar and history.
			http.SetCookie(w, &http.Cookie{Name: api.TokenCookie, Value: tok, Path: "/",
				HttpOnly: true, SameSite: http.SameSiteStrictMode})
			u := *r.URL
			q := u.Query()
			q.Del("token")
			u.RawQuery = q.Encode()
			http.Redirect(w, r, u.RequestURI(), http.StatusSeeOther)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// requestToken finds the token in the Authorization header, else (GET and
// HEAD only) a ?token= query, else the cookie that such a query set.
func requestToken(r *http.Request) (tok string, fromQuery bool, err error) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return "", false, errors.New("Authorization header: want Bearer <token>")
		}
		return strings.TrimSpace(tok), false, nil
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		if tok := r.URL.Query().Get("token"); tok != "" {
			return tok, true, nil
		}
	}
	if c, err := r.Cookie(api.TokenCookie); err == nil && c.Value != "" {
		return c.Value, false, nil
	}
	return "", false, fmt.Errorf("missing API token: send Authorization: Bearer <token>; the token is in the daemon's home, file %s", api.TokenFile)
}

// loopbackHost accepts a Host header naming localhost or a loopback IP, with
// or without a port, and, on a unix socket, the "unix" that the Go client
// (node/client) sends there. A name that merely resolves to 127.0.0.1 is
// refused: that is what DNS rebinding looks like.
func loopbackHost(hostport string, unixSocket bool) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if strings.EqualFold(host, "localhost") || (unixSocket && host == "unix") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sameOrigin says whether a browser's Origin header is the API's own: a
// page that the API itself served.
func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Scheme == "http" && u.Path == "" && u.RawQuery == "" && u.User == nil && strings.EqualFold(u.Host, host)
}

// requireJSON refuses a request body that is not declared as JSON: an HTML
// form can post text/plain to any address without the page's script being
// allowed to, but not application/json.
func requireJSON(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ct := r.Header.Get("Content-Type")
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, fmt.Errorf("Content-Type %.80q: want application/json", ct))
			return
		}
		h(w, r)
	}
}
