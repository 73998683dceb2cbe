package egressrules

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func keysAndIDs(es []Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = fmt.Sprintf("%s=%s#%d", e.Key(), e.Action, e.ID)
	}
	return out
}

func wantEntries(t *testing.T, got []Entry, want ...string) {
	t.Helper()
	if g := keysAndIDs(got); !slices.Equal(g, want) {
		t.Fatalf("entries:\n got %q\nwant %q", g, want)
	}
}

type fileID struct {
	ino   uint64
	mtime time.Time
	data  string
}

func statFile(t *testing.T, path string) fileID {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileID{ino: fi.Sys().(*syscall.Stat_t).Ino, mtime: fi.ModTime(), data: string(data)}
}

func TestStoreListMissing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := OpenStore(dir)
	es, err := s.List()
	if err != nil || len(es) != 0 {
		t.Fatalf("List = %v, %v", es, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("List created the directory: %v", err)
	}
	if s.Dir() != dir {
		t.Fatal("Dir")
	}
}

func TestStoreAddStatuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := OpenStore(dir)
	st, es, err := s.Add([]Rule{{Dst: "b.example.com"}, {Dst: "A.example.com."}, {Dst: "10.0.0.0/8", Proto: TCP, Port: Port(5432)}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st, []Status{Added, Added, Added}) {
		t.Fatalf("statuses %v", st)
	}
	wantEntries(t, es, "10.0.0.0/8:tcp:5432=allow#3", "a.example.com:https:443=allow#2", "b.example.com:https:443=allow#1")

	st, es, err = s.Add([]Rule{{Dst: "a.example.com", Action: Deny}, {Dst: "b.example.com", Proto: HTTPS, Port: Port(443)}, {Dst: "c.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st, []Status{Modified, Unchanged, Added}) {
		t.Fatalf("statuses %v", st)
	}
	wantEntries(t, es, "10.0.0.0/8:tcp:5432=allow#3", "a.example.com:https:443=deny#2", "b.example.com:https:443=allow#1", "c.example.com:https:443=allow#4")

	listed, err := OpenStore(dir).List()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(listed, es, Entry.Equal) {
		t.Fatalf("List after reopen %v, Add returned %v", listed, es)
	}
	for _, name := range []string{RulesFileName, IDsFileName} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", name, fi.Mode(), err)
		}
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", fi.Mode())
	}
	data, _ := os.ReadFile(s.RulesPath())
	if !strings.HasPrefix(string(data), "# Egress rules of the clawker firewall, managed by `clawker firewall add/remove`.") {
		t.Fatalf("header:\n%s", data)
	}
	if !strings.Contains(string(data), "  - dst: 10.0.0.0/8\n    proto: tcp\n    port: 5432\n    action: allow\n") {
		t.Fatalf("canonical form:\n%s", data)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*")); len(left) != 0 {
		t.Fatalf("temp files left: %v", left)
	}
}

func TestStoreRejectedBatchWritesNothing(t *testing.T) {
	s := OpenStore(t.TempDir())
	if _, _, err := s.Add([]Rule{{Dst: "a.example.com"}}); err != nil {
		t.Fatal(err)
	}
	before, beforeIDs := statFile(t, s.RulesPath()), statFile(t, s.IDsPath())
	st, es, err := s.Add([]Rule{{Dst: "new.example.com"}, {Dst: "bad name"}, {Dst: "db.example.com", Proto: TCP}})
	if err == nil || st != nil || es != nil {
		t.Fatalf("bad batch accepted: %v %v %v", st, es, err)
	}
	for _, want := range []string{`rules[1]: dst "bad name"`, `rules[2]: port "": proto tcp has no default port`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if after := statFile(t, s.RulesPath()); after != before {
		t.Fatal("rules file changed by a rejected batch")
	}
	if after := statFile(t, s.IDsPath()); after != beforeIDs {
		t.Fatal("ids file changed by a rejected batch")
	}
	es, _ = s.List()
	wantEntries(t, es, "a.example.com:https:443=allow#1")
}

func TestStoreUnchangedBatchDoesNotRewrite(t *testing.T) {
	s := OpenStore(t.TempDir())
	if _, _, err := s.Add([]Rule{{Dst: "a.example.com"}, {Dst: ".b.example.com", Proto: HTTP, Port: PortRange{8000, 8100}, Action: Deny}}); err != nil {
		t.Fatal(err)
	}
	before, beforeIDs := statFile(t, s.RulesPath()), statFile(t, s.IDsPath())
	time.Sleep(10 * time.Millisecond) // a rewrite would show in the mtime too
	st, es, err := s.Add([]Rule{{Dst: "A.EXAMPLE.COM", Port: Port(443)}, {Dst: ".b.example.com.", Proto: "http", Port: PortRange{8000, 8100}, Action: "deny"}})
	if err != nil || !slices.Equal(st, []Status{Unchanged, Unchanged}) || len(es) != 2 {
		t.Fatalf("%v %v %v", st, es, err)
	}
	if after := statFile(t, s.RulesPath()); after != before {
		t.Fatalf("rules file rewritten: %+v -> %+v", before, after)
	}
	if after := statFile(t, s.IDsPath()); after != beforeIDs {
		t.Fatal("ids file rewritten")
	}
	// So does a NOT_FOUND remove.
	if st, _, err := s.Remove(Rule{Dst: "zzz.example.com"}); err != nil || st != NotFound {
		t.Fatalf("%v %v", st, err)
	}
	if after := statFile(t, s.RulesPath()); after != before {
		t.Fatal("rules file rewritten by a NOT_FOUND remove")
	}
}

func TestStoreDuplicateKeyInBatch(t *testing.T) {
	s := OpenStore(t.TempDir())
	st, es, err := s.Add([]Rule{{Dst: "x.example.com"}, {Dst: "x.example.com", Action: Deny}, {Dst: "y.example.com"}, {Dst: "y.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st, []Status{Added, Modified, Added, Unchanged}) {
		t.Fatalf("statuses %v", st)
	}
	wantEntries(t, es, "x.example.com:https:443=deny#1", "y.example.com:https:443=allow#2")

	// A batch that flips a rule and flips it back reports both, and writes
	// nothing: the end state is the start.
	before := statFile(t, s.RulesPath())
	st, _, err = s.Add([]Rule{{Dst: "x.example.com"}, {Dst: "x.example.com", Action: Deny}})
	if err != nil || !slices.Equal(st, []Status{Modified, Modified}) {
		t.Fatalf("%v %v", st, err)
	}
	if statFile(t, s.RulesPath()) != before {
		t.Fatal("file rewritten by a batch with no net change")
	}
}

func TestStoreIDsStableAndNeverReused(t *testing.T) {
	dir := t.TempDir()
	s := OpenStore(dir)
	if _, _, err := s.Add([]Rule{{Dst: "a.example.com"}, {Dst: "b.example.com"}, {Dst: "c.example.com"}}); err != nil {
		t.Fatal(err)
	}
	st, es, err := s.Remove(Rule{Dst: "B.example.com", Proto: HTTPS, Action: Deny}) // action ignored
	if err != nil || st != Removed {
		t.Fatalf("%v %v", st, err)
	}
	wantEntries(t, es, "a.example.com:https:443=allow#1", "c.example.com:https:443=allow#3")

	s = OpenStore(dir) // reopen: ids come from disk
	_, es, err = s.Add([]Rule{{Dst: "d.example.com"}, {Dst: "b.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	wantEntries(t, es, "a.example.com:https:443=allow#1", "b.example.com:https:443=allow#5", "c.example.com:https:443=allow#3", "d.example.com:https:443=allow#4")

	n, es, err := s.RemoveAll()
	if err != nil || n != 4 || len(es) != 0 {
		t.Fatalf("RemoveAll = %d %v %v", n, es, err)
	}
	if n, _, _ := s.RemoveAll(); n != 0 {
		t.Fatalf("second RemoveAll = %d", n)
	}
	_, es, _ = OpenStore(dir).Add([]Rule{{Dst: "a.example.com"}})
	wantEntries(t, es, "a.example.com:https:443=allow#6")
	ids, _ := os.ReadFile(filepath.Join(dir, IDsFileName))
	if strings.Contains(string(ids), "b.example.com") {
		t.Fatalf("removed key's id kept:\n%s", ids)
	}
}

func TestStoreRemoveErrors(t *testing.T) {
	s := OpenStore(t.TempDir())
	if _, _, err := s.Remove(Rule{Dst: "bad name"}); err == nil {
		t.Fatal("invalid remove accepted")
	}
	if st, es, err := s.Remove(Rule{Dst: "x.example.com"}); err != nil || st != NotFound || len(es) != 0 {
		t.Fatalf("%v %v %v", st, es, err)
	}
	if _, _, err := s.Add([]Rule{{Dst: "db.example.com", Proto: TCP, Port: Port(5432)}}); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := s.Remove(Rule{Dst: "db.example.com", Proto: TCP, Port: Port(5433)}); st != NotFound {
		t.Fatalf("other port removed: %v", st)
	}
	if st, es, _ := s.Remove(Rule{Dst: "db.example.com.", Proto: "TCP", Port: Port(5432)}); st != Removed || len(es) != 0 {
		t.Fatalf("%v %v", st, es)
	}
}

func TestStoreConcurrentAdds(t *testing.T) {
	dir := t.TempDir()
	stores := []*Store{OpenStore(dir), OpenStore(dir)}
	const workers, each = 8, 12
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := stores[w%2]
			for i := range each {
				if _, _, err := s.Add([]Rule{{Dst: fmt.Sprintf("w%d-r%d.example.com", w, i)}}); err != nil {
					errs <- err
				}
				if i%4 == 0 {
					if _, err := s.List(); err != nil {
						errs <- err
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	es, err := OpenStore(dir).List()
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != workers*each {
		t.Fatalf("%d rules, want %d", len(es), workers*each)
	}
	var ids []uint32
	for _, e := range es {
		ids = append(ids, e.ID)
	}
	slices.Sort(ids)
	for i, id := range ids {
		if id != uint32(i+1) {
			t.Fatalf("ids not 1..%d: %v", len(ids), ids)
		}
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestStoreHandEditedFileErrors(t *testing.T) {
	dir := t.TempDir()
	s := OpenStore(dir)
	path := s.RulesPath()
	writeFile(t, path, `rules:
  - dst: ok.example.com
  - dst: exa mple.com
  - dst: db.example.com
    proto: tcp
    port: 70000
  - dst: x.example.com
    prot: http
  - dst: y.example.com
    proto: udp
    action: block
  - proto: https
`)
	_, err := s.List()
	if err == nil {
		t.Fatal("corrupt file listed")
	}
	for _, want := range []string{
		path + `: rules[1]: dst "exa mple.com": not a domain, IP or CIDR`,
		path + `: rules[2]: port "70000": ports are 1-65535`,
		path + `: rules[3]: prot "http": unknown field (the fields are dst, proto, port, action, path_rules, path_default and projects)`,
		path + `: rules[4]: proto "udp": unknown protocol`,
		path + `: rules[4]: action "block": unknown action`,
		path + `: rules[5]: dst "": missing`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "rules[2]: port \"\"") {
		t.Errorf("undecodable port reported twice:\n%v", err)
	}
	var fe *FieldError
	var fileErr *FileError
	if !errors.As(err, &fe) || !errors.As(err, &fileErr) || fileErr.Path != path {
		t.Fatalf("error types: %T", err)
	}
	// A change refuses too, and leaves the file alone.
	before := statFile(t, path)
	if _, _, err := s.Add([]Rule{{Dst: "new.example.com"}}); err == nil || !strings.Contains(err.Error(), "rules[1]: dst") {
		t.Fatalf("Add over a corrupt file: %v", err)
	}
	if statFile(t, path) != before {
		t.Fatal("corrupt file rewritten")
	}

	for text, want := range map[string]string{
		"rules: [\n":                  "yaml:",
		"- dst: a.example.com\n":      "must be a mapping with a rules: list",
		"rule:\n  - dst: a.b.com\n":   `unknown key "rule"`,
		"rules: a.example.com\n":      "rules must be a list",
		"rules:\n  - a.example.com\n": `rules[0]: rule "a.example.com": not a mapping`,
	} {
		writeFile(t, path, text)
		if _, err := s.List(); err == nil || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), path+": ") {
			t.Errorf("%q: got %v, want %q", text, err, want)
		}
	}

	writeFile(t, path, "rules: []\n")
	writeFile(t, s.IDsPath(), "next: 3\nids:\n  a.example.com:https:443: 1\n  b.example.com:https:443: 1\n")
	if _, err := s.List(); err == nil || !strings.Contains(err.Error(), "id 1 is given to both a.example.com:https:443 and b.example.com:https:443") {
		t.Errorf("duplicate ids: %v", err)
	}
}

func TestStoreHandEditedFileIsCanonicalised(t *testing.T) {
	dir := t.TempDir()
	s := OpenStore(dir)
	writeFile(t, s.RulesPath(), `# my notes
rules:
  - dst: Zeta.Example.com.
  - dst: zeta.example.com
    port: "443"
  - dst: dup.example.com
    action: deny
  - dst: dup.example.com
  - dst: 10.1.2.3/8
    proto: TCP
    port: 5432
  - dst: .Wild.example.com
    proto: http
    port: 8000-8100
  - dst: a.example.com
    proto: ssh
`)
	before := statFile(t, s.RulesPath())
	es, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	// Rules without ids get the next ones, in sorted order; the hand-edited
	// rules file itself is left as it is.
	wantEntries(t, es,
		".wild.example.com:http:8000-8100=allow#1",
		"10.0.0.0/8:tcp:5432=allow#2",
		"a.example.com:ssh:22=allow#3",
		"dup.example.com:https:443=deny#4",
		"zeta.example.com:https:443=allow#5")
	if statFile(t, s.RulesPath()) != before {
		t.Fatal("List rewrote the rules file")
	}
	again, _ := s.List()
	if !slices.EqualFunc(again, es, Entry.Equal) {
		t.Fatalf("ids changed between Lists: %v vs %v", again, es)
	}
	// The next change writes the canonical form.
	if _, _, err := s.Add([]Rule{{Dst: "new.example.com"}}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(s.RulesPath())
	if strings.Contains(string(data), "my notes") || strings.Contains(string(data), "Zeta") || strings.Count(string(data), "dup.example.com") != 1 {
		t.Fatalf("not canonical:\n%s", data)
	}
	es2, _ := s.List()
	wantEntries(t, es2,
		".wild.example.com:http:8000-8100=allow#1",
		"10.0.0.0/8:tcp:5432=allow#2",
		"a.example.com:ssh:22=allow#3",
		"dup.example.com:https:443=deny#4",
		"new.example.com:https:443=allow#6",
		"zeta.example.com:https:443=allow#5")
}

func TestStoreStaleIDsArePruned(t *testing.T) {
	// A crash after the ids file was written and before the rules file
	// leaves an id for a rule that is not there: harmless, and pruned by
	// the next change.
	dir := t.TempDir()
	s := OpenStore(dir)
	writeFile(t, s.RulesPath(), "rules:\n  - dst: a.example.com\n")
	writeFile(t, s.IDsPath(), "next: 8\nids:\n  a.example.com:https:443: 2\n  ghost.example.com:https:443: 7\n")
	es, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	wantEntries(t, es, "a.example.com:https:443=allow#2")
	_, es, err = s.Add([]Rule{{Dst: "b.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	wantEntries(t, es, "a.example.com:https:443=allow#2", "b.example.com:https:443=allow#8")
	ids, _ := os.ReadFile(s.IDsPath())
	if strings.Contains(string(ids), "ghost") || !strings.Contains(string(ids), "next: 9") {
		t.Fatalf("ids file:\n%s", ids)
	}
	// A next at or below a used id is moved past it.
	writeFile(t, s.IDsPath(), "next: 1\nids:\n  a.example.com:https:443: 2\n  b.example.com:https:443: 8\n")
	_, es, _ = s.Add([]Rule{{Dst: "c.example.com"}})
	wantEntries(t, es, "a.example.com:https:443=allow#2", "b.example.com:https:443=allow#8", "c.example.com:https:443=allow#9")
}

func TestStoreRulesFileRoundTrip(t *testing.T) {
	s := OpenStore(t.TempDir())
	in := []Rule{
		{Dst: "example.com"},
		{Dst: ".example.com", Proto: HTTP, Port: PortRange{8000, 8100}, Action: Deny},
		{Dst: "10.0.0.0/8", Proto: TCP, Port: Port(5432)},
		{Dst: "github.com", Proto: SSH},
	}
	_, added, err := s.Add(in)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(s.RulesPath())
	rules, err := parseRules(data)
	if err != nil {
		t.Fatal(err)
	}
	canon, _ := Validate(in)
	slices.SortFunc(canon, compareRules)
	if !slices.EqualFunc(rules, canon, Rule.Equal) {
		t.Fatalf("file reads back as %+v, want %+v", rules, canon)
	}
	if !strings.Contains(string(data), "port: 8000-8100\n") {
		t.Fatalf("range form:\n%s", data)
	}
	// The store's entries compile into the policy the siblings use.
	p := Compile(added, nil)
	if d := p.Decide("www.example.com", HTTP, 8080); d.Allow || d.Rule == nil || d.Rule.Key() != ".example.com:http:8000-8100" {
		t.Fatalf("%+v", d)
	}
}

func TestStoreCrashBetweenFilesKeepsIDs(t *testing.T) {
	dir := t.TempDir()
	s := OpenStore(dir)
	if _, _, err := s.Add([]Rule{{Dst: "a.example.com"}, {Dst: "b.example.com"}}); err != nil {
		t.Fatal(err)
	}
	crash := errors.New("crash")
	failRules := func(name string) error {
		if name == RulesFileName {
			return crash
		}
		return nil
	}
	testBeforeWrite = failRules
	t.Cleanup(func() { testBeforeWrite = nil })

	// An add dies after the ids file: the old rules keep their ids, the new
	// one's id is spent.
	if _, _, err := s.Add([]Rule{{Dst: "c.example.com"}}); !errors.Is(err, crash) {
		t.Fatalf("err %v", err)
	}
	// A remove dies before the rules file: nothing lost either.
	if _, _, err := s.Remove(Rule{Dst: "a.example.com"}); !errors.Is(err, crash) {
		t.Fatalf("err %v", err)
	}
	testBeforeWrite = nil
	es, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	wantEntries(t, es, "a.example.com:https:443=allow#1", "b.example.com:https:443=allow#2")
	_, es, err = s.Add([]Rule{{Dst: "d.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	// c's spent id 3 is not given to d.
	wantEntries(t, es, "a.example.com:https:443=allow#1", "b.example.com:https:443=allow#2", "d.example.com:https:443=allow#4")
}

func pathsOf(r Rule) []string {
	var out []string
	for _, pr := range r.PathRules {
		s := string(pr.Action) + " " + pr.Path
		if len(pr.Methods) > 0 {
			s += " " + strings.Join(pr.Methods, ",")
		}
		out = append(out, s)
	}
	return out
}

func storedRule(t *testing.T, es []Entry, key string) Entry {
	t.Helper()
	for _, e := range es {
		if e.Key() == key {
			return e
		}
	}
	t.Fatalf("no %s in %v", key, keysAndIDs(es))
	return Entry{}
}

func TestStoreAddMergesPathRules(t *testing.T) {
	s := OpenStore(t.TempDir())
	const key = "api.example.com:https:443"
	st, es, err := s.Add([]Rule{{Dst: "api.example.com"}})
	if err != nil || st[0] != Added {
		t.Fatal(st, err)
	}
	id := storedRule(t, es, key).ID

	steps := []struct {
		add     Rule
		status  Status
		paths   []string
		pathDfl Action
	}{
		{Rule{Dst: "api.example.com", PathRules: []PathRule{{Path: "/v1/", Methods: []string{"get"}}}}, Modified,
			[]string{"allow /v1/ GET"}, Deny},
		{Rule{Dst: "API.example.com", PathRules: []PathRule{{Path: "/v1/admin", Action: Deny}}}, Modified,
			[]string{"allow /v1/ GET", "deny /v1/admin"}, Deny},
		// Same path: replaced in place, order kept.
		{Rule{Dst: "api.example.com", PathRules: []PathRule{{Path: "/v1/./", Methods: []string{"GET", "POST"}}}}, Modified,
			[]string{"allow /v1/ GET,POST", "deny /v1/admin"}, Deny},
		// Nothing new.
		{Rule{Dst: "api.example.com", PathRules: []PathRule{{Path: "/v1/admin", Action: "DENY"}}}, Unchanged,
			[]string{"allow /v1/ GET,POST", "deny /v1/admin"}, Deny},
		// A plain add with the stored action keeps the path rules.
		{Rule{Dst: "api.example.com"}, Unchanged,
			[]string{"allow /v1/ GET,POST", "deny /v1/admin"}, Deny},
		// path_default changes only when given.
		{Rule{Dst: "api.example.com", PathDefault: Allow, PathRules: []PathRule{{Path: "~^/v2/.*"}}}, Modified,
			[]string{"allow /v1/ GET,POST", "deny /v1/admin", "allow ~^/v2/.*"}, Allow},
		{Rule{Dst: "api.example.com", PathRules: []PathRule{{Path: "/v3/"}}}, Modified,
			[]string{"allow /v1/ GET,POST", "deny /v1/admin", "allow ~^/v2/.*", "allow /v3/"}, Allow},
		// Another action replaces the rule, path rules included.
		{Rule{Dst: "api.example.com", Action: Deny}, Modified, nil, ""},
		// A deny rule becomes an inspected allow rule.
		{Rule{Dst: "api.example.com", PathRules: []PathRule{{Path: "/"}}}, Modified, []string{"allow /"}, Deny},
	}
	for i, step := range steps {
		st, es, err := s.Add([]Rule{step.add})
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		e := storedRule(t, es, key)
		if st[0] != step.status || !slices.Equal(pathsOf(e.Rule), step.paths) || e.PathDefault != step.pathDfl || e.ID != id {
			t.Fatalf("step %d: %s, stored %v path_default %q id %d; want %s %v %q id %d",
				i, st[0], pathsOf(e.Rule), e.PathDefault, e.ID, step.status, step.paths, step.pathDfl, id)
		}
		listed, err := s.List()
		if err != nil || !slices.EqualFunc(listed, es, Entry.Equal) {
			t.Fatalf("step %d: List %v, %v; Add returned %v", i, listed, err, es)
		}
	}
}

func TestStoreRemovePath(t *testing.T) {
	s := OpenStore(t.TempDir())
	if _, _, err := s.Add([]Rule{{Dst: "api.example.com", PathDefault: Allow, PathRules: []PathRule{{Path: "/v1/"}, {Path: "/admin", Action: Deny}}}, {Dst: "plain.example.com"}}); err != nil {
		t.Fatal(err)
	}
	const key = "api.example.com:https:443"
	before := statFile(t, s.RulesPath())
	for _, c := range []struct {
		rule Rule
		path string
	}{
		{Rule{Dst: "api.example.com"}, "/v2/"},
		{Rule{Dst: "nope.example.com"}, "/v1/"},
		{Rule{Dst: "plain.example.com"}, "/v1/"},
		{Rule{Dst: "api.example.com", Proto: HTTP}, "/v1/"},
	} {
		st, _, err := s.RemovePath(c.rule, c.path)
		if err != nil || st != NotFound {
			t.Fatalf("RemovePath(%s, %s) = %s, %v; want NOT_FOUND", c.rule.Dst, c.path, st, err)
		}
	}
	if after := statFile(t, s.RulesPath()); after != before {
		t.Fatal("rules file rewritten by a NOT_FOUND RemovePath")
	}

	st, es, err := s.RemovePath(Rule{Dst: "API.example.com.", Action: Deny}, "/x/../v1/")
	if err != nil || st != PathRemoved {
		t.Fatalf("%s, %v", st, err)
	}
	if e := storedRule(t, es, key); !slices.Equal(pathsOf(e.Rule), []string{"deny /admin"}) || e.PathDefault != Allow {
		t.Fatalf("after removing /v1/: %v %q", pathsOf(e.Rule), e.PathDefault)
	}
	st, es, err = s.RemovePath(Rule{Dst: "api.example.com"}, "/admin")
	if err != nil || st != PathRemoved {
		t.Fatalf("%s, %v", st, err)
	}
	e := storedRule(t, es, key)
	if e.PathRules != nil || e.PathDefault != "" || e.Action != Allow {
		t.Fatalf("the last path removed should leave a plain rule: %+v", e)
	}
	data, _ := os.ReadFile(s.RulesPath())
	if strings.Contains(string(data), "path") {
		t.Fatalf("rules file still has path fields:\n%s", data)
	}
	if p := Compile(es, nil).Decide("api.example.com", HTTPS, 443); !p.Allow || p.Paths != nil {
		t.Fatalf("plain rule decision: %+v", p)
	}

	for _, c := range []struct{ path, want string }{
		{"v1", `path "v1": a path starts with / (write /v1, or ~ and a regular expression)`},
		{"/a%zz", `path "/a%zz": invalid escape`},
		{"", `path "": empty`},
	} {
		if _, _, err := s.RemovePath(Rule{Dst: "api.example.com"}, c.path); err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("RemovePath(%q): %v; want %q", c.path, err, c.want)
		}
	}
	if _, _, err := s.RemovePath(Rule{Dst: "bad name"}, "/"); err == nil || !strings.HasPrefix(err.Error(), `dst "bad name"`) {
		t.Errorf("bad dst: %v", err)
	}
}

func TestStoreRejectedPathBatchWritesNothing(t *testing.T) {
	s := OpenStore(t.TempDir())
	if _, _, err := s.Add([]Rule{{Dst: "api.example.com", PathRules: []PathRule{{Path: "/v1/"}}}}); err != nil {
		t.Fatal(err)
	}
	before, beforeIDs := statFile(t, s.RulesPath()), statFile(t, s.IDsPath())
	_, _, err := s.Add([]Rule{
		{Dst: "api.example.com", PathRules: []PathRule{{Path: "/v2/"}}},
		{Dst: "new.example.com"},
		{Dst: "api.example.com", PathRules: []PathRule{{Path: "~(", Methods: []string{"G T"}}}},
		{Dst: "10.0.0.1", PathRules: []PathRule{{Path: "/"}}},
	})
	if err == nil {
		t.Fatal("bad batch accepted")
	}
	for _, want := range []string{`rules[2]: path_rules[0].path "~(": not a valid RE2 expression`, `rules[2]: path_rules[0].methods "G T"`, `rules[3]: path_rules[0].path "/": path rules apply only to an https or http rule on a name`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if after := statFile(t, s.RulesPath()); after != before {
		t.Fatal("rules file changed by a rejected batch")
	}
	if after := statFile(t, s.IDsPath()); after != beforeIDs {
		t.Fatal("ids file changed by a rejected batch")
	}
}
