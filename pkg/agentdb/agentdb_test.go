package agentdb

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// thumb returns a deterministic valid thumbprint for a test certificate name.
func thumb(name string) string {
	s := sha256.Sum256([]byte("cert:" + name))
	return hex.EncodeToString(s[:])
}

// cid returns a deterministic docker-style container id.
func cid(name string) string {
	s := sha256.Sum256([]byte("container:" + name))
	return hex.EncodeToString(s[:])
}

func openTest(t testing.TB, path string) *DB {
	t.Helper()
	d, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func newAgent(project, name, cert, container string, at time.Time) Agent {
	return Agent{
		Project:      project,
		AgentName:    name,
		ContainerID:  cid(container),
		Thumbprint:   thumb(cert),
		RegisteredAt: at,
	}
}

var t0 = time.Date(2026, 5, 12, 9, 14, 2, 123456789, time.UTC)

func TestKey(t *testing.T) {
	tp, c := thumb("a"), cid("a")
	s := sha256.Sum256([]byte(tp + c))
	if got, want := Key(tp, c), hex.EncodeToString(s[:]); got != want {
		t.Fatalf("Key = %s, want %s", got, want)
	}
	if Key(tp, c) == Key(tp, cid("b")) {
		t.Fatal("Key ignores the container id")
	}
}

func TestOpenMigratesAndReopenIsNoop(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "nested", "dir", "agents.db")
	d, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}

	info, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o700 {
		t.Errorf("parent dir mode = %o, want 700", perm)
	}
	info, err = os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("db file mode = %o, want 600", perm)
	}

	var mode string
	if err := d.writer.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
	var sync, fk int
	if err := d.writer.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil || sync != 2 {
		t.Errorf("writer synchronous = %d, %v; want 2 (FULL)", sync, err)
	}
	if err := d.writer.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil || fk != 1 {
		t.Errorf("foreign_keys = %d, %v; want 1", fk, err)
	}
	if _, err := d.reader.ExecContext(ctx, "DELETE FROM agents"); err == nil {
		t.Error("reader pool accepted a write; want query_only")
	}

	versions := func(d *DB) []int64 {
		rows, err := d.reader.QueryContext(ctx, "SELECT version_id FROM goose_db_version ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var vs []int64
		for rows.Next() {
			var v int64
			if err := rows.Scan(&v); err != nil {
				t.Fatal(err)
			}
			vs = append(vs, v)
		}
		return vs
	}
	first := versions(d)
	if len(first) < 2 || first[len(first)-1] != 1 {
		t.Fatalf("goose versions after first open = %v, want [0 1]", first)
	}
	if _, _, err := d.Register(ctx, newAgent("p", "a", "c1", "k1", t0)); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	d2 := openTest(t, path)
	if again := versions(d2); fmt.Sprint(again) != fmt.Sprint(first) {
		t.Fatalf("reopen changed migration history: %v -> %v", first, again)
	}
	if n := len(mustList(t, d2)); n != 1 {
		t.Fatalf("after reopen List has %d rows, want 1", n)
	}
}

func TestOpenRejectsNewerSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agents.db")
	d := openTest(t, path)
	if _, err := d.writer.ExecContext(ctx,
		"INSERT INTO goose_db_version (version_id, is_applied) VALUES (99, 1)"); err != nil {
		t.Fatal(err)
	}
	d.Close()
	_, err := Open(ctx, path)
	if err == nil || !strings.Contains(err.Error(), "upgrade clawker-cp") {
		t.Fatalf("Open on newer schema = %v, want an error telling to upgrade", err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	for _, p := range []string{"", ":memory:", "file:x.db?mode=memory"} {
		if _, err := Open(ctx, p); err == nil {
			t.Errorf("Open(%q) succeeded, want an error", p)
		}
	}

	garbage := filepath.Join(t.TempDir(), "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a database ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(ctx, garbage)
	if err == nil || !strings.Contains(err.Error(), "move it aside") {
		t.Fatalf("Open(garbage) = %v, want an error saying what to do", err)
	}

	// A regular file where the parent directory should be.
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, filepath.Join(blocker, "agents.db"))
	if err == nil || !strings.Contains(err.Error(), "create directory") {
		t.Fatalf("Open under a file = %v, want a create-directory error", err)
	}
}

func TestOpenPathWithSpecialCharacters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dir with space?and#hash%20", "agents.db")
	d := openTest(t, path)
	if _, _, err := d.Register(context.Background(), newAgent("p", "a", "c", "k", t0)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at the literal path: %v", err)
	}
}

func mustList(t testing.TB, d *DB) []Agent {
	t.Helper()
	as, err := d.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return as
}

func TestRegisterCreateAndIdempotent(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "agents.db"))

	in := newAgent("myapp", "dev", "cert-dev", "c-dev", t0)
	got, created, err := d.Register(ctx, in)
	if err != nil || !created {
		t.Fatalf("Register = %v, created=%v; want created", err, created)
	}
	if got.Key != Key(in.Thumbprint, in.ContainerID) {
		t.Errorf("Key = %s, want Key(thumbprint, container)", got.Key)
	}
	if !got.RegisteredAt.Equal(t0) || !got.LastSeen.Equal(t0) || got.RegisteredAt.Location() != time.UTC {
		t.Errorf("times = %v / %v, want %v UTC for both", got.RegisteredAt, got.LastSeen, t0)
	}

	// Same identity again, later: the stored row comes back unchanged.
	again := newAgent("myapp", "dev", "cert-dev", "c-dev", t0.Add(time.Hour))
	got2, created, err := d.Register(ctx, again)
	if err != nil || created {
		t.Fatalf("re-Register = %v, created=%v; want existing row", err, created)
	}
	if got2 != got {
		t.Errorf("re-Register returned %+v, want the stored %+v", got2, got)
	}

	fetched, err := d.Get(ctx, got.Key)
	if err != nil {
		t.Fatal(err)
	}
	if fetched != got {
		t.Errorf("Get = %+v, want %+v", fetched, got)
	}
	if _, err := d.Get(ctx, Key(thumb("nope"), cid("nope"))); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(unknown) = %v, want ErrNotFound", err)
	}
}

func TestRegisterDefaultsAndValidation(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "agents.db"))

	before := time.Now()
	a, _, err := d.Register(ctx, newAgent("p", "a", "c", "k", time.Time{}))
	if err != nil {
		t.Fatal(err)
	}
	if a.RegisteredAt.Before(before.Add(-time.Second)) || a.RegisteredAt.After(time.Now()) {
		t.Errorf("zero RegisteredAt became %v, want now", a.RegisteredAt)
	}

	seen := newAgent("p", "b", "c2", "k2", t0)
	seen.LastSeen = t0.Add(time.Minute)
	b, _, err := d.Register(ctx, seen)
	if err != nil || !b.LastSeen.Equal(t0.Add(time.Minute)) {
		t.Errorf("LastSeen = %v, %v; want the later LastSeen kept", b.LastSeen, err)
	}

	bad := []Agent{
		{AgentName: "a", ContainerID: "c", Thumbprint: thumb("x")},
		{Project: "p", ContainerID: "c", Thumbprint: thumb("x")},
		{Project: "p", AgentName: "a", Thumbprint: thumb("x")},
		{Project: "p", AgentName: "a", ContainerID: "c"},
		{Project: "p", AgentName: "a", ContainerID: "c", Thumbprint: strings.ToUpper(thumb("x"))},
		{Project: "p", AgentName: "a", ContainerID: "c", Thumbprint: thumb("x")[:63]},
		{Project: "p", AgentName: "a", ContainerID: "c", Thumbprint: thumb("x"), Key: Key(thumb("y"), "c")},
	}
	for i, in := range bad {
		if _, _, err := d.Register(ctx, in); !errors.Is(err, ErrInvalidAgent) {
			t.Errorf("case %d: Register(%+v) = %v, want ErrInvalidAgent", i, in, err)
		}
	}
	// A correct caller-supplied key is accepted.
	ok := newAgent("p", "c", "c3", "k3", t0)
	ok.Key = Key(ok.Thumbprint, ok.ContainerID)
	if _, _, err := d.Register(ctx, ok); err != nil {
		t.Errorf("Register with matching Key: %v", err)
	}
}

func TestRegisterContainerNeverRebound(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "agents.db"))

	orig, _, err := d.Register(ctx, newAgent("myapp", "dev", "cert-1", "c1", t0))
	if err != nil {
		t.Fatal(err)
	}

	// Another certificate claiming the same container.
	_, _, err = d.Register(ctx, newAgent("myapp", "dev", "cert-2", "c1", t0))
	if !errors.Is(err, ErrContainerBound) {
		t.Fatalf("other thumbprint: err = %v, want ErrContainerBound", err)
	}
	for _, p := range []string{thumb("cert-1")[:12], thumb("cert-2")[:12]} {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not name thumbprint prefix %s", err, p)
		}
	}

	// Same certificate and container, another name.
	_, _, err = d.Register(ctx, newAgent("myapp", "review", "cert-1", "c1", t0))
	if !errors.Is(err, ErrContainerBound) {
		t.Fatalf("other name: err = %v, want ErrContainerBound", err)
	}
	if !strings.Contains(err.Error(), "myapp/dev") || !strings.Contains(err.Error(), "myapp/review") {
		t.Errorf("error %q does not name both bindings", err)
	}

	as := mustList(t, d)
	if len(as) != 1 || as[0] != orig {
		t.Fatalf("rejected registrations changed the registry: %+v", as)
	}
}

// RegisterExisting answers an existing binding as Register does and
// refuses, writing nothing, one that would be new (an unknown container)
// or one Register would refuse (the container bound to another key or
// name: no token is needed to say no).
func TestRegisterExisting(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "agents.db"))

	if _, err := d.RegisterExisting(ctx, newAgent("myapp", "dev", "cert-1", "c1", t0)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("new binding: err = %v, want ErrNotFound", err)
	}
	if as := mustList(t, d); len(as) != 0 {
		t.Fatalf("a refused binding was written: %+v", as)
	}
	orig, _, err := d.Register(ctx, newAgent("myapp", "dev", "cert-1", "c1", t0))
	if err != nil {
		t.Fatal(err)
	}
	got, err := d.RegisterExisting(ctx, newAgent("myapp", "dev", "cert-1", "c1", t0.Add(time.Hour)))
	if err != nil || got != orig {
		t.Fatalf("existing binding: %+v, %v; want %+v", got, err, orig)
	}
	// Another key for the bound container is refused at once.
	if _, err := d.RegisterExisting(ctx, newAgent("myapp", "dev", "cert-2", "c1", t0)); !errors.Is(err, ErrContainerBound) {
		t.Fatalf("other thumbprint: err = %v, want ErrContainerBound", err)
	}
	// The same binding under another name is refused as Register refuses it.
	if _, err := d.RegisterExisting(ctx, newAgent("myapp", "review", "cert-1", "c1", t0)); !errors.Is(err, ErrContainerBound) {
		t.Fatalf("other name: err = %v, want ErrContainerBound", err)
	}
	if as := mustList(t, d); len(as) != 1 || as[0] != orig {
		t.Fatalf("the registry changed: %+v", as)
	}
}

func TestRegisterReplacesNameOnNewContainer(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "agents.db"))

	old, _, err := d.Register(ctx, newAgent("myapp", "dev", "cert-1", "c-old", t0))
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := d.Register(ctx, newAgent("myapp", "review", "cert-r", "c-r", t0))
	if err != nil {
		t.Fatal(err)
	}

	// The dev container was recreated: new container, new certificate.
	repl, created, err := d.Register(ctx, newAgent("myapp", "dev", "cert-2", "c-new", t0.Add(time.Minute)))
	if err != nil || !created {
		t.Fatalf("replacement Register = %v, created=%v", err, created)
	}
	if _, err := d.Get(ctx, old.Key); !errors.Is(err, ErrNotFound) {
		t.Errorf("old row still present: %v", err)
	}
	as := mustList(t, d)
	if len(as) != 2 || as[0] != repl || as[1] != other {
		t.Fatalf("List = %+v, want [replacement, review]", as)
	}

	// Same certificate reused by a new container (the key differs because
	// the container does): also a replacement.
	repl2, created, err := d.Register(ctx, newAgent("myapp", "dev", "cert-2", "c-newer", t0.Add(2*time.Minute)))
	if err != nil || !created || repl2.Key == repl.Key {
		t.Fatalf("same-cert replacement = %+v, created=%v, err=%v", repl2, created, err)
	}

	if n := len(mustList(t, d)); n != 2 {
		t.Fatalf("List has %d rows, want 2", n)
	}
}

func TestListOrder(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "agents.db"))
	if as := mustList(t, d); len(as) != 0 {
		t.Fatalf("empty registry listed %v", as)
	}
	names := [][2]string{{"zeta", "a"}, {"alpha", "z"}, {"alpha", "b"}, {"mid", "m"}, {"alpha", "a"}}
	for i, n := range names {
		if _, _, err := d.Register(ctx, newAgent(n[0], n[1], fmt.Sprint("cert", i), fmt.Sprint("c", i), t0)); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for _, a := range mustList(t, d) {
		got = append(got, a.Project+"/"+a.AgentName)
	}
	want := "[alpha/a alpha/b alpha/z mid/m zeta/a]"
	if fmt.Sprint(got) != want {
		t.Fatalf("List order = %v, want %s", got, want)
	}
}

func TestTouchLastSeen(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "agents.db"))

	var keys []string
	for i := range 5 {
		a, _, err := d.Register(ctx, newAgent("p", fmt.Sprint("a", i), fmt.Sprint("cert", i), fmt.Sprint("c", i), t0))
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, a.Key)
	}

	if err := d.TouchLastSeen(ctx, nil); err != nil {
		t.Fatalf("empty batch: %v", err)
	}

	later := t0.Add(10 * time.Second)
	batch := map[string]time.Time{
		keys[0]:                         later,
		keys[1]:                         later.Add(time.Second),
		keys[2]:                         t0.Add(-time.Hour), // older than stored: ignored
		keys[3]:                         {},                 // zero: ignored
		Key(thumb("gone"), cid("gone")): later,              // unknown: ignored
	}
	if err := d.TouchLastSeen(ctx, batch); err != nil {
		t.Fatal(err)
	}
	want := map[string]time.Time{
		keys[0]: later, keys[1]: later.Add(time.Second), keys[2]: t0, keys[3]: t0, keys[4]: t0,
	}
	check := func() {
		t.Helper()
		for k, w := range want {
			a, err := d.Get(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			if !a.LastSeen.Equal(w) {
				t.Errorf("%s last_seen = %v, want %v", k[:8], a.LastSeen, w)
			}
			if !a.RegisteredAt.Equal(t0) {
				t.Errorf("%s registered_at moved to %v", k[:8], a.RegisteredAt)
			}
		}
	}
	check()

	// Monotonic: going backwards is a no-op, forwards moves.
	if err := d.TouchLastSeen(ctx, map[string]time.Time{keys[0]: t0.Add(time.Second), keys[4]: later}); err != nil {
		t.Fatal(err)
	}
	want[keys[4]] = later
	check()

	// Nanosecond precision survives.
	precise := later.Add(time.Nanosecond * 7)
	if err := d.TouchLastSeen(ctx, map[string]time.Time{keys[0]: precise}); err != nil {
		t.Fatal(err)
	}
	want[keys[0]] = precise
	check()

	// A non-UTC input is stored as the same instant.
	ny := time.FixedZone("UTC-4", -4*3600)
	if err := d.TouchLastSeen(ctx, map[string]time.Time{keys[1]: later.Add(time.Minute).In(ny)}); err != nil {
		t.Fatal(err)
	}
	want[keys[1]] = later.Add(time.Minute)
	check()

	// One transaction per batch: a cancelled context writes nothing.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := d.TouchLastSeen(cctx, map[string]time.Time{keys[2]: later}); err == nil {
		t.Error("TouchLastSeen with a cancelled context succeeded")
	}
	check()
}

func TestTouchLastSeenLargeBatch(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "agents.db"))
	fill(t, d, 2000)
	as := mustList(t, d)
	batch := make(map[string]time.Time, len(as))
	for i, a := range as {
		batch[a.Key] = t0.Add(time.Duration(i+1) * time.Second)
	}
	start := time.Now()
	if err := d.TouchLastSeen(ctx, batch); err != nil {
		t.Fatal(err)
	}
	t.Logf("TouchLastSeen of %d keys took %v", len(batch), time.Since(start))
	for _, a := range mustList(t, d) {
		if !a.LastSeen.Equal(batch[a.Key]) {
			t.Fatalf("%s last_seen = %v, want %v", a.Key[:8], a.LastSeen, batch[a.Key])
		}
	}
}

func TestDeleteByContainer(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "agents.db"))
	a, _, err := d.Register(ctx, newAgent("p", "a", "cert", "c1", t0))
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := d.Register(ctx, newAgent("p", "b", "cert-b", "c2", t0))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := d.DeleteByContainer(ctx, cid("nope")); err != nil || n != 0 {
		t.Fatalf("delete unknown = %d, %v; want 0, nil", n, err)
	}
	if n, err := d.DeleteByContainer(ctx, a.ContainerID); err != nil || n != 1 {
		t.Fatalf("delete = %d, %v; want 1, nil", n, err)
	}
	if _, err := d.Get(ctx, a.Key); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted row still there: %v", err)
	}
	if as := mustList(t, d); len(as) != 1 || as[0] != b {
		t.Fatalf("List = %+v, want only %+v", as, b)
	}
	// Once its binding is deleted, the name can be registered afresh.
	if _, created, err := d.Register(ctx, newAgent("p", "a", "cert-2", "c3", t0)); err != nil || !created {
		t.Fatalf("register after delete = %v, %v", created, err)
	}
}

func TestSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "agents.db")
	d, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	var want []Agent
	for i := range 20 {
		a, _, err := d.Register(ctx, newAgent("p", fmt.Sprintf("a%02d", i), fmt.Sprint("cert", i), fmt.Sprint("c", i), t0.Add(time.Duration(i))))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, a)
	}
	if err := d.TouchLastSeen(ctx, map[string]time.Time{want[3].Key: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	want[3].LastSeen = t0.Add(time.Hour)
	if _, err := d.DeleteByContainer(ctx, want[5].ContainerID); err != nil {
		t.Fatal(err)
	}
	want = append(want[:5], want[6:]...)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	d2 := openTest(t, path)
	if err := d2.IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
	got := mustList(t, d2)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after reopen:\n got %+v\nwant %+v", got, want)
	}
}

func TestConcurrentReadersAndWriters(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "agents.db"))
	const writers, perWriter = 4, 25
	errs := make(chan error, writers+2)
	done := make(chan struct{})
	for w := range writers {
		go func() {
			for i := range perWriter {
				name := fmt.Sprintf("w%d-%d", w, i)
				if _, _, err := d.Register(ctx, newAgent("p", name, name, name, t0)); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 2 {
		go func() {
			for {
				select {
				case <-done:
					errs <- nil
					return
				default:
				}
				if _, err := d.List(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := len(mustList(t, d)); n != writers*perWriter {
		t.Fatalf("List has %d rows, want %d", n, writers*perWriter)
	}
}

func TestIntegrityCheck(t *testing.T) {
	d := openTest(t, filepath.Join(t.TempDir(), "agents.db"))
	if err := d.IntegrityCheck(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// fill inserts n bindings in one transaction, bypassing Register's per-call
// commit so large fixtures are quick to build.
func fill(t testing.TB, d *DB, n int) {
	t.Helper()
	ctx := context.Background()
	tx, err := d.writer.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	stmt, err := tx.PrepareContext(ctx, "INSERT INTO agents ("+agentColumns+") VALUES (?, ?, ?, ?, ?, ?, ?)")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		name := fmt.Sprint("fill", i)
		a := newAgent(fmt.Sprintf("project-%03d", i%100), fmt.Sprintf("agent-%05d", i), name, name, t0)
		if _, err := stmt.ExecContext(ctx, Key(a.Thumbprint, a.ContainerID), a.Project, a.AgentName,
			a.ContainerID, a.Thumbprint, toNanos(t0), toNanos(t0)); err != nil {
			t.Fatal(err)
		}
	}
	if err := stmt.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkRegister(b *testing.B) {
	ctx := context.Background()
	d := openTest(b, filepath.Join(b.TempDir(), "agents.db"))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		name := fmt.Sprint("bench", i)
		if _, created, err := d.Register(ctx, newAgent("p", name, name, name, t0)); err != nil || !created {
			b.Fatalf("Register: created=%v err=%v", created, err)
		}
	}
}

func BenchmarkRegisterIdempotent(b *testing.B) {
	ctx := context.Background()
	d := openTest(b, filepath.Join(b.TempDir(), "agents.db"))
	a := newAgent("p", "a", "c", "k", t0)
	if _, _, err := d.Register(ctx, a); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, created, err := d.Register(ctx, a); err != nil || created {
			b.Fatalf("Register: created=%v err=%v", created, err)
		}
	}
}

func BenchmarkList10k(b *testing.B) {
	ctx := context.Background()
	d := openTest(b, filepath.Join(b.TempDir(), "agents.db"))
	fill(b, d, 10_000)
	for b.Loop() {
		as, err := d.List(ctx)
		if err != nil || len(as) != 10_000 {
			b.Fatalf("List: %d rows, %v", len(as), err)
		}
	}
}

func BenchmarkTouchLastSeen1k(b *testing.B) {
	ctx := context.Background()
	d := openTest(b, filepath.Join(b.TempDir(), "agents.db"))
	fill(b, d, 1000)
	as, err := d.List(ctx)
	if err != nil {
		b.Fatal(err)
	}
	batch := make(map[string]time.Time, len(as))
	for i := 0; b.Loop(); i++ {
		for _, a := range as {
			batch[a.Key] = t0.Add(time.Duration(i+1) * time.Second)
		}
		if err := d.TouchLastSeen(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
}

// A row written when bindings were keyed on the leaf's DER is upgraded to
// the key thumbprint, keeping its registration time, the first time its
// agent presents that leaf (by either Register); a leaf of another key is
// still refused, and a leaf thumbprint matching no row upgrades nothing.
func TestRegisterUpgradesLeafKeyedRow(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "agents.db"))
	// As the old CP wrote it: thumbprint = the leaf's DER hash.
	old, _, err := d.Register(ctx, newAgent("myapp", "dev", "leaf-1", "c1", t0))
	if err != nil {
		t.Fatal(err)
	}
	for _, existingOnly := range []bool{true, false} {
		t.Run(fmt.Sprintf("existingOnly=%v", existingOnly), func(t *testing.T) {
			// The row as the old CP wrote it.
			if _, err := d.DeleteByContainer(ctx, cid("c1")); err != nil {
				t.Fatal(err)
			}
			if _, _, err := d.Register(ctx, newAgent("myapp", "dev", "leaf-1", "c1", t0)); err != nil {
				t.Fatal(err)
			}
			other := newAgent("myapp", "dev", "key-2", "c1", t0.Add(time.Hour))
			other.LeafThumbprint = thumb("leaf-2")
			if _, _, err := d.Register(ctx, other); !errors.Is(err, ErrContainerBound) {
				t.Fatalf("a leaf of another key: err = %v, want ErrContainerBound", err)
			}
			a := newAgent("myapp", "dev", "key-1", "c1", t0.Add(72*time.Hour))
			a.LeafThumbprint = thumb("leaf-1")
			var got Agent
			var created bool
			if existingOnly {
				got, err = d.RegisterExisting(ctx, a)
			} else {
				got, created, err = d.Register(ctx, a)
			}
			want := old
			want.Key, want.Thumbprint = Key(thumb("key-1"), cid("c1")), thumb("key-1")
			if err != nil || created || got != want {
				t.Fatalf("upgrade: %+v created=%v, %v; want %+v", got, created, err, want)
			}
			if as := mustList(t, d); len(as) != 1 || as[0] != want {
				t.Fatalf("stored: %+v, want %+v", as, want)
			}
			// From now on the key alone finds it.
			again, err := d.RegisterExisting(ctx, newAgent("myapp", "dev", "key-1", "c1", t0.Add(96*time.Hour)))
			if err != nil || again != want {
				t.Fatalf("after the upgrade: %+v, %v", again, err)
			}
		})
	}
}
