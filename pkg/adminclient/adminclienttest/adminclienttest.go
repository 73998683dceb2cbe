// Package adminclienttest gives tests a private clawker home and a fake
// AdminService served over real mTLS on a loopback port, so code built on
// adminclient is tested through the same certificates and handshakes as in
// production.
package adminclienttest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/settings"
	adminv1 "github.com/clawker/clawker-cp/proto/admin/v1"
)

// Home is a set of fresh XDG base directories, removed when the test ends.
type Home struct {
	ConfigHome, DataHome, StateHome string
}

// NewHome makes a Home under t.TempDir().
func NewHome(t testing.TB) *Home {
	t.Helper()
	dir := t.TempDir()
	return &Home{
		ConfigHome: filepath.Join(dir, "config"),
		DataHome:   filepath.Join(dir, "data"),
		StateHome:  filepath.Join(dir, "state"),
	}
}

// Getenv is the environment of a process using this home: the three XDG
// variables and nothing else.
func (h *Home) Getenv(k string) string {
	switch k {
	case "XDG_CONFIG_HOME":
		return h.ConfigHome
	case "XDG_DATA_HOME":
		return h.DataHome
	case "XDG_STATE_HOME":
		return h.StateHome
	}
	return ""
}

// Paths resolves the home's clawker paths with the production code.
func (h *Home) Paths(t testing.TB) settings.Paths {
	t.Helper()
	p, err := settings.ResolvePaths(h.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// EnsureAuth creates the CLI's auth material in Paths.AuthDir and returns
// it loaded.
func (h *Home) EnsureAuth(t testing.TB) *certs.Material {
	t.Helper()
	dir := h.Paths(t).AuthDir
	if _, err := certs.Ensure(dir, certs.Options{}); err != nil {
		t.Fatal(err)
	}
	m, err := certs.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// SetAdminPort writes settings.yaml with control_plane.admin_port = port.
func (h *Home) SetAdminPort(t testing.TB, port int) {
	t.Helper()
	p := h.Paths(t)
	if err := os.MkdirAll(p.ConfigDir, 0o700); err != nil {
		t.Fatal(err)
	}
	data := fmt.Sprintf("control_plane:\n  admin_port: %d\n", port)
	if err := os.WriteFile(p.SettingsFile, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// SetPorts writes settings.yaml with control_plane.admin_port and
// control_plane.hydra_public_port (where adminclient.WithOAuth gets tokens).
func (h *Home) SetPorts(t testing.TB, adminPort, hydraPublicPort int) {
	t.Helper()
	p := h.Paths(t)
	if err := os.MkdirAll(p.ConfigDir, 0o700); err != nil {
		t.Fatal(err)
	}
	data := fmt.Sprintf("control_plane:\n  admin_port: %d\n  hydra_public_port: %d\n", adminPort, hydraPublicPort)
	if err := os.WriteFile(p.SettingsFile, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Settings loads the home's settings.yaml.
func (h *Home) Settings(t testing.TB) settings.Settings {
	t.Helper()
	s, err := settings.Load(h.Paths(t).SettingsFile)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Server is a fake AdminService. ListAgents answers with the agents set by
// SetAgents, GetSystemTime with the real clock; the Firewall* methods are
// in firewall.go.
type Server struct {
	adminv1.UnimplementedAdminServiceServer

	Port int

	mu     sync.Mutex
	agents []*adminv1.Agent
	page   int // ListAgents page size; 0: every agent in one answer
	calls  map[string]int
	auth   map[string]string // method -> last authorization header ("" when absent)
	fw     firewallState     // firewall.go
}

// Serve starts a fake AdminService with the CP's admin listener config:
// m's server cert, client certs required, CN clawker-cli only. It stops
// when the test ends.
func Serve(t testing.TB, m *certs.Material) *Server {
	t.Helper()
	cfg, err := m.ServerTLSConfig(certs.CLICommonName)
	if err != nil {
		t.Fatal(err)
	}
	return ServeTLS(t, cfg)
}

// ServeTLS is Serve with an arbitrary TLS config, to test mismatches.
func ServeTLS(t testing.TB, cfg *tls.Config) *Server {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Port: lis.Addr().(*net.TCPAddr).Port, calls: map[string]int{}, auth: map[string]string{}}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)), grpc.UnaryInterceptor(s.recordAuth))
	adminv1.RegisterAdminServiceServer(gs, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis) // returns when stopped
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return s
}

// recordAuth notes each call's authorization header; the fake checks no
// token (the control plane's interceptor is tested in actors/grpc).
func (s *Server) recordAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := ""
	if vals := md.Get("authorization"); len(vals) > 0 {
		v = vals[0]
	}
	s.mu.Lock()
	s.auth[path.Base(info.FullMethod)] = v
	s.mu.Unlock()
	return handler(ctx, req)
}

// Authorization is the authorization header of the last call of method
// (e.g. "ListAgents"), "" when it carried none.
func (s *Server) Authorization(method string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.auth[method]
}

// SetAgents replaces what ListAgents returns.
func (s *Server) SetAgents(agents ...*adminv1.Agent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.agents = agents
}

// SetPageSize makes ListAgents answer n agents at a time, the next page's
// token being the offset; 0 (the default) answers every agent at once.
func (s *Server) SetPageSize(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.page = n
}

// Calls reports how many times method (e.g. "ListAgents") was served.
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

// ListAgents implements adminv1.AdminServiceServer.
func (s *Server) ListAgents(_ context.Context, req *adminv1.ListAgentsRequest) (*adminv1.ListAgentsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["ListAgents"]++
	from, end := 0, len(s.agents)
	if s.page > 0 {
		if t := req.GetPageToken(); t != "" {
			n, err := strconv.Atoi(t)
			if err != nil || n < 0 || n > len(s.agents) {
				return nil, status.Errorf(codes.InvalidArgument, "page_token %q", t)
			}
			from = n
		}
		end = min(from+s.page, len(s.agents))
	}
	resp := &adminv1.ListAgentsResponse{Total: uint32(len(s.agents))}
	for _, a := range s.agents[from:end] {
		resp.Agents = append(resp.Agents, proto.Clone(a).(*adminv1.Agent))
	}
	if end < len(s.agents) {
		resp.NextPageToken = strconv.Itoa(end)
	}
	return resp, nil
}

// GetSystemTime implements adminv1.AdminServiceServer.
func (s *Server) GetSystemTime(context.Context, *adminv1.GetSystemTimeRequest) (*adminv1.GetSystemTimeResponse, error) {
	s.mu.Lock()
	s.calls["GetSystemTime"]++
	s.mu.Unlock()
	return &adminv1.GetSystemTimeResponse{Now: timestamppb.New(time.Now())}, nil
}

// FreePort returns a loopback port nothing listens on (it was free a
// moment ago), for "control plane not running" tests.
func FreePort(t testing.TB) int {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}
