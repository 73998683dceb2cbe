package stackapi

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/certs"
	"github.com/clawker/clawker-cp/pkg/egressrules"
)

func TestInspectCAOnlyToTheProxy(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	if _, err := r.client(t, ProxyClient).FetchInspectCA(ctx); !errors.Is(err, ErrNoInspectCA) {
		t.Fatalf("before any CA: %v, want ErrNoInspectCA", err)
	}
	fw, _, err := certs.EnsureFirewallCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r.srv.SetInspectCA(fw.CertPEM, fw.KeyPEM)
	got, err := r.client(t, ProxyClient).FetchInspectCA(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.Fingerprint != fw.Fingerprint || string(got.KeyPEM) != string(fw.KeyPEM) || string(got.CertPEM) != string(fw.CertPEM) {
		t.Fatalf("fetched %+v, want the CA set (fingerprint %s)", got.Fingerprint, fw.Fingerprint)
	}
	// The DNS sibling's identity opens nothing of it.
	if _, err := r.client(t, DNSClient).FetchInspectCA(ctx); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("fetch by the DNS sibling: %v, want 403", err)
	}
	// A CA that does not parse withdraws it: fail closed.
	r.srv.SetInspectCA([]byte("not pem"), fw.KeyPEM)
	if _, err := r.client(t, ProxyClient).FetchInspectCA(ctx); !errors.Is(err, ErrNoInspectCA) {
		t.Fatalf("after a bad CA: %v, want ErrNoInspectCA", err)
	}
}

func TestPolicyPollAnnouncesCAChanges(t *testing.T) {
	r := newRig(t)
	r.srv.Publish(doc(5, "example.com"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cas := make(chan string, 10)
	docs := make(chan uint64, 10)
	proxy := r.client(t, ProxyClient)
	go func() {
		_ = proxy.WatchPolicyAndCA(ctx, func(d egressrules.Doc) error { docs <- d.Generation; return nil },
			func(ctx context.Context, fp string) error {
				if fp != "" {
					ca, err := proxy.FetchInspectCA(ctx)
					if err != nil {
						return err
					}
					fp = ca.Fingerprint
				}
				cas <- fp
				return nil
			})
	}()
	// The DNS sibling's answers never carry the CA.
	dnsDocs := make(chan uint64, 10)
	go func() {
		_ = r.client(t, DNSClient).WatchPolicy(ctx, func(d egressrules.Doc) error { dnsDocs <- d.Generation; return nil })
	}()
	if g := recv(t, docs); g != 5 {
		t.Fatalf("first doc %d", g)
	}
	recv(t, dnsDocs)

	dir := t.TempDir()
	fw, _, err := certs.EnsureFirewallCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	r.srv.SetInspectCA(fw.CertPEM, fw.KeyPEM)
	// Without a rule change, the held poll wakes with the new fingerprint.
	if fp := recv(t, cas); fp != fw.Fingerprint {
		t.Fatalf("CA %q, want %s", fp, fw.Fingerprint)
	}
	_, cur, err := certs.RotateFirewallCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	r.srv.SetInspectCA(cur.CertPEM, cur.KeyPEM)
	if fp := recv(t, cas); fp != cur.Fingerprint {
		t.Fatalf("after the rotation %q, want %s", fp, cur.Fingerprint)
	}
	// The same doc is not applied again for a CA change alone.
	select {
	case g := <-docs:
		t.Fatalf("doc %d applied again on a CA change", g)
	default:
	}
	r.srv.Publish(doc(6, "example.com"))
	if g := recv(t, docs); g != 6 {
		t.Fatalf("doc %d, want 6", g)
	}
	select {
	case fp := <-cas:
		t.Fatalf("CA %q taken again on a rule change", fp)
	default:
	}
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
		panic("unreachable")
	}
}
