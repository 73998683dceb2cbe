// Package hydratest runs a real Hydra (v2, DSN=memory) for tests, set up
// as pkg/ory sets it up in the control plane: the public port serves TLS
// with the clawker server certificate, the admin port plain HTTP, both on
// free loopback ports. Clients are registered with pkg/ory's Admin.
//
// The binary is $CLAWKER_ORY_DIR/hydra (default <module root>/bin/ory,
// built by `go tool task ory`). Without it tests skip, except under
// CI=true where they fail.
package hydratest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/cptest"
	"github.com/clawker/clawker-cp/pkg/ory"
	"github.com/clawker/clawker-cp/pkg/testkit"
)

// EnvOryDir names the directory holding the Ory binaries.
const EnvOryDir = "CLAWKER_ORY_DIR"

// Options tune Start.
type Options struct {
	// AccessTokenTTL is Hydra's ttl.access_token; zero: 1h.
	AccessTokenTTL time.Duration
}

// Hydra is one running hydra process.
type Hydra struct {
	// PublicURL is https://127.0.0.1:<port>, AdminURL http://127.0.0.1:<port>
	// (no slash).
	PublicURL, AdminURL   string
	PublicPort, AdminPort int
	// TokenURL is the token endpoint, spelled as Hydra checks a client
	// assertion's aud.
	TokenURL string
	// CA verifies the public port (the material's CA).
	CA *x509.CertPool
	// ServerName is the name their certificate is verified against.
	ServerName string

	bin    string
	args   []string
	env    []string
	dir    string
	client *http.Client

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  *syncBuffer
}

// Binary returns the hydra binary's path, or skips t (fails under CI=true)
// when there is none.
func Binary(t testing.TB) string {
	t.Helper()
	dir := os.Getenv(EnvOryDir)
	if dir == "" {
		root, err := moduleRoot()
		if err != nil {
			testkit.SkipOrFail(t, "no hydra binary: "+err.Error())
		}
		dir = filepath.Join(root, "bin", "ory")
	}
	bin := filepath.Join(dir, ory.Hydra)
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		testkit.SkipOrFail(t, fmt.Sprintf("no hydra binary at %s (build it with `go tool task ory`, or set %s)", bin, EnvOryDir))
	}
	return bin
}

// Start runs hydra serving TLS with m's server certificate (read from
// m.Dir, so m must come from certs.Load or certs.LoadServerBundle) and
// waits until its admin port reports ready. It is stopped when t ends.
func Start(t testing.TB, m *certs.Material, opts Options) *Hydra {
	t.Helper()
	bin := Binary(t)
	ttl := opts.AccessTokenTTL
	if ttl <= 0 {
		ttl = time.Hour
	}
	ports := cptest.FreePorts(t, 2)
	pub, adm := ports[0], ports[1]
	dir := t.TempDir()
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		t.Fatal(err)
	}
	h := &Hydra{
		PublicURL:  "https://127.0.0.1:" + strconv.Itoa(pub),
		AdminURL:   "http://127.0.0.1:" + strconv.Itoa(adm),
		PublicPort: pub,
		AdminPort:  adm,
		ServerName: certs.ServerCommonName,
		bin:        bin,
		dir:        dir,
	}
	h.TokenURL = h.PublicURL + "/oauth2/token"
	h.CA = x509.NewCertPool()
	h.CA.AddCert(m.CA)
	h.client = &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: h.CA, ServerName: h.ServerName}},
	}
	cfg := fmt.Sprintf(`dsn: memory
log:
  level: warn
  format: json
serve:
  public:
    host: 127.0.0.1
    port: %d
  admin:
    host: 127.0.0.1
    port: %d
    tls:
      enabled: false
  tls:
    enabled: true
    cert:
      path: %s
    key:
      path: %s
urls:
  self:
    issuer: %s/
    public: %s/
secrets:
  system:
    - %s
ttl:
  access_token: %s
strategies:
  access_token: opaque
`, pub, adm, filepath.Join(m.Dir, certs.ServerCertFile), filepath.Join(m.Dir, certs.ServerKeyFile),
		h.PublicURL, h.PublicURL, hex.EncodeToString(secret), durationString(ttl))
	cfgPath := filepath.Join(dir, "hydra.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	h.args = []string{"serve", "all", "--config", cfgPath, "--sqa-opt-out"}
	h.env = append(os.Environ(), "SQA_OPT_OUT=true", "DSN=memory")
	t.Cleanup(func() {
		h.Stop()
		if t.Failed() {
			t.Logf("hydratest: hydra output (last 40 lines):\n%s", h.Tail(40))
		}
	})
	if err := h.start(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitReady(30 * time.Second); err != nil {
		t.Fatalf("hydratest: %v\n%s", err, h.Tail(40))
	}
	return h
}

func (h *Hydra) start() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	cmd := exec.Command(h.bin, h.args...)
	cmd.Env = h.env
	cmd.Dir = h.dir
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("hydratest: starting %s: %w", h.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	h.cmd, h.done, h.out = cmd, done, out
	return nil
}

// WaitReady polls the admin port's /health/ready until 200.
func (h *Hydra) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		h.mu.Lock()
		done := h.done
		h.mu.Unlock()
		select {
		case <-done:
			return errors.New("hydra exited before it was ready")
		default:
		}
		resp, err := h.client.Get(h.AdminURL + "/health/ready")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("hydra not ready within %s: %s", timeout, last)
}

// Stop ends hydra (SIGTERM, SIGKILL after 5 s) and waits for it. Its
// memory store, hence every client and token, is gone.
func (h *Hydra) Stop() {
	h.mu.Lock()
	cmd, done := h.cmd, h.done
	h.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Process.Signal(syscall.SIGCONT) // in case it is frozen
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Freeze stops hydra with SIGSTOP: its ports still accept connections
// (the kernel completes handshakes into the backlog) but nothing answers,
// as with a hung process. Thaw resumes it.
func (h *Hydra) Freeze() error { return h.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen hydra.
func (h *Hydra) Thaw() error { return h.signal(syscall.SIGCONT) }

func (h *Hydra) signal(sig os.Signal) error {
	h.mu.Lock()
	cmd := h.cmd
	h.mu.Unlock()
	if cmd == nil {
		return errors.New("hydratest: hydra is not running")
	}
	return cmd.Process.Signal(sig)
}

// Tail is the last n lines hydra wrote.
func (h *Hydra) Tail(n int) string {
	h.mu.Lock()
	out := h.out
	h.mu.Unlock()
	if out == nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// RegisterClawkerClients registers clawker-cli and clawker-agent exactly
// as the control plane does (ory.ClawkerClients: private_key_jwt, ES256,
// jwks as their keys).
func (h *Hydra) RegisterClawkerClients(t testing.TB, jwks *certs.JWKS) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ory.NewAdmin(h.AdminURL).RegisterClawkerClients(ctx, jwks); err != nil {
		t.Fatalf("hydratest: %v", err)
	}
}

// RegisterClient registers one client.
func (h *Hydra) RegisterClient(t testing.TB, c ory.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ory.NewAdmin(h.AdminURL).UpsertClient(ctx, c); err != nil {
		t.Fatalf("hydratest: %v", err)
	}
}

// RevokeClientTokens deletes every access token of clientID
// (DELETE /admin/oauth2/tokens): introspection calls them inactive.
func (h *Hydra) RevokeClientTokens(t testing.TB, clientID string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodDelete, h.AdminURL+"/admin/oauth2/tokens?client_id="+clientID, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("hydratest: revoking tokens of %s: %v", clientID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		t.Fatalf("hydratest: revoking tokens of %s: HTTP %d: %s", clientID, resp.StatusCode, out)
	}
}

// HTTPClient trusts the clawker CA, for direct calls to either port.
// Its requests to the public port verify ServerName.
func (h *Hydra) HTTPClient() *http.Client { return h.client }

func durationString(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return strconv.FormatInt(int64(d/time.Millisecond), 10) + "ms"
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside a Go module")
		}
		dir = parent
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
