package egressproxy

import (
	"bufio"
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helloServer answers one line-based request "hello\n" with "world <name>\n".
func helloHandler(name string) func(*tls.Conn) {
	return func(c *tls.Conn) {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "hello\n" {
			return
		}
		io.WriteString(c, "world "+name+"\n")
	}
}

func roundTrip(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading reply: %v", err)
	}
	return line
}

func TestTLSAllowedPassesThroughWithServerCertificate(t *testing.T) {
	w := newWorld(t)
	_, cert := w.tlsServer("api.example.test", nil, helloHandler("api"))
	w.setPolicy(loopback, httpsRule("api.example.test"))

	c, err := w.tlsClient("api.example.test", nil)
	if err != nil {
		t.Fatalf("handshake through proxy: %v", err)
	}
	defer c.Close()
	// No MITM: the client sees the server's own leaf.
	if got := c.ConnectionState().PeerCertificates[0].Raw; !bytes.Equal(got, cert.Certificate[0]) {
		t.Fatal("client saw a certificate other than the server's own")
	}
	if got := roundTrip(t, c); got != "world api\n" {
		t.Fatalf("reply %q", got)
	}
	c.Close()
	l := w.waitLog(func(l logLine) bool { return l.Host == "api.example.test" })
	if l.Verdict != "allowed" || l.Proto != "https" || l.Rule == "" || l.BytesUp == 0 || l.BytesDown == 0 ||
		!strings.HasPrefix(l.Upstream, "127.0.0.") || !strings.HasSuffix(l.Upstream, ":443") || l.ClosedBy == "" {
		t.Fatalf("log line %+v", l)
	}
	if _, err := time.Parse(time.RFC3339Nano, l.Time); err != nil {
		t.Fatalf("time %q: %v", l.Time, err)
	}
}

func TestTLSDeniedSNIGetsAlertAndNothingReachesServer(t *testing.T) {
	w := newWorld(t)
	srv, _ := w.tlsServer("evil.example.test", nil, helloHandler("evil"))
	w.tlsServer("api.example.test", nil, helloHandler("api"))
	w.setPolicy(loopback, httpsRule("api.example.test"))

	_, err := w.tlsClient("evil.example.test", nil)
	if err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("want access_denied alert, got %v", err)
	}
	l := w.waitLog(func(l logLine) bool { return l.Host == "evil.example.test" })
	if l.Verdict != "denied" || l.Reason == "" || l.Upstream != "" || l.BytesDown != 0 {
		t.Fatalf("log line %+v", l)
	}
	if n, b := srv.accepts.Load(), srv.bytes.Load(); n != 0 || b != 0 {
		t.Fatalf("denied server got %d conns, %d bytes", n, b)
	}
	if n := w.res.lookups.Load(); n != 0 {
		t.Fatalf("denied name was resolved %d times", n)
	}
}

func TestTLSSplitClientHello(t *testing.T) {
	for _, parts := range []int{2, 3} {
		w := newWorld(t)
		w.tlsServer("api.example.test", nil, helloHandler("api"))
		w.setPolicy(loopback, httpsRule("api.example.test"))

		// Unit level: the re-framed hello parses to the same SNI.
		hello := clientHello(t, &tls.Config{ServerName: "api.example.test"})
		split := reframe(t, hello, parts)
		pk, err := Peek(bytes.NewReader(split))
		if err != nil || pk.SNI != "api.example.test" || !bytes.Equal(pk.Bytes, split) {
			t.Fatalf("parts=%d: Peek = %q, %v", parts, pk.SNI, err)
		}

		// End to end: a real handshake whose hello is split over records.
		raw, err := net.Dial("tcp", w.addr)
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(&reframeConn{Conn: raw, t: t, parts: parts}, &tls.Config{ServerName: "api.example.test", RootCAs: w.ca.pool})
		if err := c.Handshake(); err != nil {
			t.Fatalf("parts=%d: handshake: %v", parts, err)
		}
		if got := roundTrip(t, c); got != "world api\n" {
			t.Fatalf("reply %q", got)
		}
		c.Close()
	}
}

func TestTLSNoSNIRefused(t *testing.T) {
	w := newWorld(t)
	srv, _ := w.tlsServer("api.example.test", nil, helloHandler("api"))
	w.setPolicy(loopback, httpsRule("api.example.test"))
	_, err := w.tlsClient("", func(c *tls.Config) { c.InsecureSkipVerify = true })
	if err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("want access_denied, got %v", err)
	}
	l := w.waitLog(func(l logLine) bool { return l.Proto == "https" })
	if l.Verdict != "denied" || !strings.Contains(l.Reason, "SNI") {
		t.Fatalf("log line %+v", l)
	}
	if srv.accepts.Load() != 0 {
		t.Fatal("server reached")
	}
}

// echConfig builds an ECHConfig (draft-ietf-tls-esni) for an X25519 key with
// HKDF-SHA256 / AES-128-GCM and the given public (outer) name.
func echConfig(t *testing.T, pub []byte, publicName string) []byte {
	t.Helper()
	var c []byte
	c = append(c, 7)                             // config_id
	c = binary.BigEndian.AppendUint16(c, 0x0020) // KEM DHKEM(X25519, HKDF-SHA256)
	c = binary.BigEndian.AppendUint16(c, uint16(len(pub)))
	c = append(c, pub...)
	c = binary.BigEndian.AppendUint16(c, 4)      // cipher_suites length
	c = binary.BigEndian.AppendUint16(c, 0x0001) // HKDF-SHA256
	c = binary.BigEndian.AppendUint16(c, 0x0001) // AES-128-GCM
	c = append(c, 64)                            // maximum_name_length
	c = append(c, byte(len(publicName)))
	c = append(c, publicName...)
	c = binary.BigEndian.AppendUint16(c, 0) // extensions
	out := binary.BigEndian.AppendUint16(nil, 0xfe0d)
	out = binary.BigEndian.AppendUint16(out, uint16(len(c)))
	return append(out, c...)
}

func TestTLSWithECHDecidedOnOuterSNI(t *testing.T) {
	w := newWorld(t)
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cfg := echConfig(t, key.PublicKey().Bytes(), "public.example.test")
	list := binary.BigEndian.AppendUint16(nil, uint16(len(cfg)))
	list = append(list, cfg...)

	// The server holds the ECH key and a certificate for the inner name.
	w.tlsServer("secret.example.test", func(c *tls.Config) {
		c.EncryptedClientHelloKeys = []tls.EncryptedClientHelloKey{{Config: cfg, PrivateKey: key.Bytes()}}
	}, helloHandler("secret"))
	// The resolver maps the outer name to that server: the proxy only ever
	// sees the outer name.
	w.mu.Lock()
	w.res.answers["public.example.test"] = w.res.answers["secret.example.test"]
	w.mu.Unlock()
	w.setPolicy(loopback, httpsRule("public.example.test"))

	ech := func(c *tls.Config) { c.EncryptedClientHelloConfigList = list; c.MinVersion = tls.VersionTLS13 }
	hello := clientHello(t, &tls.Config{ServerName: "secret.example.test", EncryptedClientHelloConfigList: list, MinVersion: tls.VersionTLS13})
	pk, err := Peek(bytes.NewReader(hello))
	if err != nil || !pk.ECH || pk.SNI != "public.example.test" {
		t.Fatalf("Peek: sni=%q ech=%v err=%v", pk.SNI, pk.ECH, err)
	}

	c, err := w.tlsClient("secret.example.test", ech)
	if err != nil {
		t.Fatalf("ECH handshake through proxy: %v", err)
	}
	if !c.ConnectionState().ECHAccepted {
		t.Fatal("ECH not accepted end to end")
	}
	if got := roundTrip(t, c); got != "world secret\n" {
		t.Fatalf("reply %q", got)
	}
	c.Close()
	l := w.waitLog(func(l logLine) bool { return l.Host == "public.example.test" })
	if l.Verdict != "allowed" || !l.ECH {
		t.Fatalf("log line %+v", l)
	}
}

func TestGarbageGetsReset(t *testing.T) {
	w := newWorld(t)
	w.setPolicy(loopback, httpsRule("api.example.test"))
	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("\x00\x01\x02\x03\x04 SSH-2.0-whatever\r\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 10))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("want ECONNRESET, got %v", err)
	}
	l := w.waitLog(func(l logLine) bool { return l.Proto == "other" })
	if l.Verdict != "denied" {
		t.Fatalf("log %+v", l)
	}
}

func TestPrivateAnswerRefusedUnlessAllowed(t *testing.T) {
	w := newWorld(t)
	w.tlsServer("api.example.test", nil, helloHandler("api"))
	w.res.mu.Lock()
	w.res.answers["rebind.example.test"] = []netip.Addr{netip.MustParseAddr("10.0.0.5")}
	w.res.mu.Unlock()

	// 127.0.0.0/8 not in PrivateDestinations: the loopback answer is refused.
	w.setPolicy(nil, httpsRule("api.example.test"), httpsRule("rebind.example.test"))
	_, err := w.tlsClient("api.example.test", nil)
	if err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Fatalf("want internal_error alert for a loopback answer, got %v", err)
	}
	// 10.0.0.5 is refused even with loopback allowed.
	w.setPolicy(loopback, httpsRule("api.example.test"), httpsRule("rebind.example.test"))
	_, err = w.tlsClient("rebind.example.test", nil)
	if err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Fatalf("want internal_error alert for a 10/8 answer, got %v", err)
	}
	if n := w.dials.Load(); n != 0 {
		t.Fatalf("proxy dialled %d times a refused answer", n)
	}
	l := w.waitLog(func(l logLine) bool { return l.Host == "rebind.example.test" })
	if l.Verdict != "error" || !strings.Contains(l.Reason, "10.0.0.5") {
		t.Fatalf("log %+v", l)
	}
	// With the floor opened for loopback the same name works.
	c, err := w.tlsClient("api.example.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestFailClosedWithoutPolicy(t *testing.T) {
	w := newWorld(t)
	srv, _ := w.tlsServer("api.example.test", nil, helloHandler("api"))
	_, err := w.tlsClient("api.example.test", nil)
	if err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("want access_denied without a policy, got %v", err)
	}
	if srv.accepts.Load() != 0 {
		t.Fatal("server reached without a policy")
	}
}

func TestParseHelloRejectsMalformed(t *testing.T) {
	good := clientHello(t, &tls.Config{ServerName: "api.example.test"})
	// Every truncation of a good hello must fail cleanly, never panic.
	for i := 0; i < len(good); i++ {
		if _, err := Peek(bytes.NewReader(good[:i])); err == nil {
			t.Fatalf("truncated hello of %d bytes accepted", i)
		}
	}
	// Bit flips must not panic.
	for i := 5; i < len(good); i++ {
		b := bytes.Clone(good)
		b[i] ^= 0xff
		Peek(bytes.NewReader(b))
	}
	// A non-handshake record after the first fragment is refused.
	split := reframe(t, good, 2)
	n := 5 + (int(split[3])<<8 | int(split[4]))
	split[n] = 0x17
	if _, err := Peek(bytes.NewReader(split)); err == nil {
		t.Fatal("interleaved application-data record accepted")
	}
}

func FuzzPeek(f *testing.F) {
	f.Add(clientHello(f, &tls.Config{ServerName: "api.example.test"}))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pk, err := Peek(bytes.NewReader(b))
		if err == nil && pk.Kind == KindTLS && pk.SNI == "" {
			t.Fatal("TLS without SNI and without error")
		}
		if len(pk.Bytes) > len(b) {
			t.Fatal("read more than given")
		}
	})
}
