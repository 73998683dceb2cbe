package stackapi

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

type rig struct {
	ca   *CA
	srv  *Server
	addr string

	mu      sync.Mutex
	answers []Answer
	sinkErr error
}

func newRig(t *testing.T) *rig {
	t.Helper()
	ca, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{ca: ca}
	r.srv = NewServer(func(_ context.Context, from string, a []Answer) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.sinkErr != nil {
			return r.sinkErr
		}
		r.answers = append(r.answers, a...)
		return nil
	}, DNSClient, ProxyClient)
	tlsCfg, err := ca.ServerTLS(netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: r.srv.Handler(), TLSConfig: tlsCfg}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = hs.Close() })
	r.addr = ln.Addr().String()
	return r
}

func (r *rig) client(t *testing.T, name string) *Client {
	t.Helper()
	cert, key, err := r.ca.MintClient(name)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ClientTLS(r.ca.CertPEM(), cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return NewClient(r.addr, cfg)
}

func doc(gen uint64, dsts ...string) egressrules.Doc {
	d := egressrules.Doc{Generation: gen}
	for i, dst := range dsts {
		d.Rules = append(d.Rules, egressrules.Entry{Rule: egressrules.Rule{Dst: dst}, ID: uint32(i + 1)})
	}
	return d
}

func TestPolicyWatchAndAcknowledgement(t *testing.T) {
	r := newRig(t)
	r.srv.Publish(doc(10, "example.com"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	got := make(chan egressrules.Doc, 10)
	release := make(chan struct{}) // holds the DNS client's second apply
	var applies int
	go func() {
		_ = r.client(t, DNSClient).WatchPolicy(ctx, func(d egressrules.Doc) error {
			applies++
			if applies == 2 {
				<-release
			}
			got <- d
			return nil
		})
	}()
	go func() { _ = r.client(t, ProxyClient).WatchPolicy(ctx, func(egressrules.Doc) error { return nil }) }()

	if d := <-got; d.Generation != 10 || len(d.Rules) != 1 {
		t.Fatalf("first doc %+v", d)
	}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	if err := r.srv.WaitApplied(wctx, 10); err != nil {
		t.Fatal(err)
	}
	wcancel()

	r.srv.Publish(doc(11, "example.com", "example.org"))
	// The DNS client has not applied 11 yet: WaitApplied must not return.
	short, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := r.srv.WaitApplied(short, 11)
	scancel()
	if err == nil || !strings.Contains(err.Error(), DNSClient) {
		t.Fatalf("WaitApplied before the DNS client applied: %v, want a timeout naming %s", err, DNSClient)
	}
	close(release)
	if d := <-got; d.Generation != 11 || len(d.Rules) != 2 {
		t.Fatalf("second doc %+v", d)
	}
	wctx, wcancel = context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := r.srv.WaitApplied(wctx, 11); err != nil {
		t.Fatal(err)
	}
	if a := r.srv.Applied(); a[DNSClient] != 11 || a[ProxyClient] != 11 {
		t.Fatalf("applied %v", a)
	}
}

func TestWaitAppliedSkipsAbsentSibling(t *testing.T) {
	r := newRig(t)
	r.srv.Publish(doc(1))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// Neither sibling ever connected: nothing to wait for (while a sibling
	// is down it passes nothing; it fetches the newest policy first).
	if err := r.srv.WaitApplied(ctx, 1); err != nil {
		t.Fatal(err)
	}
}

func TestAnswersOnlyFromTheDNSSibling(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	ans := []Answer{{Name: "example.com", IP: netip.MustParseAddr("203.0.113.7"), RuleIDs: []uint32{3}, TTL: 60}}
	if err := r.client(t, DNSClient).Report(ctx, ans); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	if len(r.answers) != 1 || r.answers[0].IP != ans[0].IP || r.answers[0].RuleIDs[0] != 3 {
		t.Fatalf("sink got %+v", r.answers)
	}
	r.mu.Unlock()
	if err := r.client(t, ProxyClient).Report(ctx, ans); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("report from the proxy: %v, want 403", err)
	}
	r.mu.Lock()
	r.sinkErr = errors.New("kernel map full")
	r.mu.Unlock()
	if err := r.client(t, DNSClient).Report(ctx, ans); err == nil || !strings.Contains(err.Error(), "kernel map full") {
		t.Fatalf("failing sink: %v", err)
	}
	v6 := []Answer{{Name: "example.com", IP: netip.MustParseAddr("2001:db8::1"), RuleIDs: []uint32{3}}}
	if err := r.client(t, DNSClient).Report(ctx, v6); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("IPv6 answer: %v, want 400", err)
	}
}

func TestForeignCertificateRefused(t *testing.T) {
	r := newRig(t)
	other, err := LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := other.MintClient(DNSClient)
	if err != nil {
		t.Fatal(err)
	}
	// Trusts our server, presents a certificate of another CA.
	cfg, err := ClientTLS(r.ca.CertPEM(), cert, key)
	if err != nil {
		t.Fatal(err)
	}
	err = NewClient(r.addr, cfg).Report(context.Background(), nil)
	if err == nil {
		t.Fatal("a certificate of another CA was accepted")
	}
	// No client certificate at all.
	c, err := tls.Dial("tcp", r.addr, &tls.Config{RootCAs: r.ca.pool(), ServerName: ServerName})
	if err == nil {
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Fatal("a client without a certificate was served")
	}
}

func TestCAPersistsAndRefusesDamage(t *testing.T) {
	dir := t.TempDir()
	a, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.CertPEM()) != string(b.CertPEM()) {
		t.Fatal("a second load made a new CA")
	}
	fi, err := os.Stat(filepath.Join(dir, caKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", fi.Mode(), err)
	}
	if err := os.WriteFile(filepath.Join(dir, caKeyFile), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir); err == nil || !strings.Contains(err.Error(), "remove") {
		t.Fatalf("damaged key: %v, want an error saying what to remove", err)
	}
}

func TestRefusalsReachTheSink(t *testing.T) {
	r := newRig(t)
	got := make(chan []Refusal, 4)
	r.srv.OnRefusals(func(from string, rs []Refusal) {
		if from == DNSClient {
			got <- rs
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q := NewRefusalQueue(ctx, r.client(t, DNSClient))
	q.Add(Refusal{Time: time.Now(), Src: "172.22.0.5", Name: "unlisted.example", Reason: "not in the egress policy"})
	select {
	case rs := <-got:
		if len(rs) != 1 || rs[0].Name != "unlisted.example" || rs[0].Src != "172.22.0.5" {
			t.Fatalf("sink got %+v", rs)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the refusal never reached the sink")
	}
	if q.Dropped.Load() != 0 {
		t.Fatalf("%d dropped", q.Dropped.Load())
	}
}
