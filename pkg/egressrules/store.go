package egressrules

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/gofrs/flock"
	"gopkg.in/yaml.v3"

	"github.com/clawker/clawker-cp/pkg/atomicfile"
)

// File names inside the store's directory.
const (
	RulesFileName = "egress-rules.yaml"
	IDsFileName   = "egress-rule-ids.yaml"
	LockFileName  = ".egress-rules.lock"
)

const rulesHeader = `# Egress rules of the clawker firewall, managed by ` + "`clawker firewall add/remove`" + `.
# Hand edits are read and checked, but the next change rewrites this file
# in canonical form and drops comments.
`

const idsHeader = `# Stable identities of the rules in egress-rules.yaml (rule key -> id),
# managed by clawker. next only grows: an id is never given out twice.
`

// Entry is a stored rule with its stable identity. In JSON its fields are
// flat: dst, proto, port, action, id.
type Entry struct {
	Rule `yaml:",inline" json:",inline"`
	ID   uint32 `yaml:"-" json:"id"`
}

// Equal reports whether two entries hold the same rule under the same id.
func (e Entry) Equal(o Entry) bool { return e.ID == o.ID && e.Rule.Equal(o.Rule) }

// Status is what Add, Remove or RemovePath did with one rule.
type Status string

// The statuses of Add and Remove.
const (
	Added     Status = "ADDED"
	Modified  Status = "MODIFIED"
	Unchanged Status = "UNCHANGED"
	Removed   Status = "REMOVED"
	NotFound  Status = "NOT_FOUND"
	// PathRemoved: RemovePath removed one path rule of a rule.
	PathRemoved Status = "PATH_REMOVED"
)

// FileError is a problem in one of the store's files; its message prefixes
// every line of Err with the file's path. Err may join several
// *FieldError, reachable with errors.As.
type FileError struct {
	Path string
	Err  error
}

func (e *FileError) Error() string {
	lines := strings.Split(e.Err.Error(), "\n")
	for i, l := range lines {
		lines[i] = e.Path + ": " + l
	}
	return strings.Join(lines, "\n")
}

func (e *FileError) Unwrap() error { return e.Err }

// Store is the rule set on disk. Every method takes a flock(2) on the lock
// file for its whole read-modify-write (shared for List, exclusive for
// changes), so Stores in several goroutines or processes on one directory
// never lose each other's changes. The zero Store is not usable: OpenStore.
//
// Identities: every rule key gets a uint32 id, starting at 1, kept while the
// rule exists and never given to another key afterwards (next only grows;
// re-adding a removed key gives it a new id). A change writes the ids file
// first, holding the ids of both the old and the new rules, then the rules
// file, then prunes the ids of removed rules: a crash at any point leaves
// every stored rule with an id.
//
// A rule without an id can then only come from a hand edit (or a deleted
// ids file). List repairs it: it retakes the lock exclusively, gives the
// rule the next id and writes the ids file only; the rules file, and the
// hand edit in it, are left as they are. Refusing instead would leave the
// firewall unable to load a file the user was told they may edit.
type Store struct {
	dir string
}

// OpenStore returns the store kept in dir. Nothing is read or created until
// the first call; dir is created (0700) by the first change.
func OpenStore(dir string) *Store { return &Store{dir: dir} }

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// RulesPath is the path of the rules file.
func (s *Store) RulesPath() string { return filepath.Join(s.dir, RulesFileName) }

// IDsPath is the path of the identities file.
func (s *Store) IDsPath() string { return filepath.Join(s.dir, IDsFileName) }

// idTable is the identities file.
type idTable struct {
	Next uint32            `yaml:"next"`
	IDs  map[string]uint32 `yaml:"ids"`
}

// snapshot is the store as read under the lock.
type snapshot struct {
	rules []Rule // canonical, deduplicated, sorted
	ids   idTable
}

func (sn snapshot) missingIDs() bool {
	for _, r := range sn.rules {
		if _, ok := sn.ids.IDs[r.key()]; !ok {
			return true
		}
	}
	return false
}

func (sn snapshot) entries() []Entry {
	out := make([]Entry, len(sn.rules))
	for i, r := range sn.rules {
		out[i] = Entry{Rule: r, ID: sn.ids.IDs[r.key()]}
	}
	return out
}

// locked runs fn under the store's lock. A shared lock on a directory that
// does not exist yet runs fn without locking: there is nothing to read.
func (s *Store) locked(exclusive bool, fn func() error) error {
	if exclusive {
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return fmt.Errorf("egress rules: %w", err)
		}
	} else if _, err := os.Stat(s.dir); errors.Is(err, os.ErrNotExist) {
		return fn()
	}
	l := flock.New(filepath.Join(s.dir, LockFileName))
	var err error
	if exclusive {
		err = l.Lock()
	} else {
		err = l.RLock()
	}
	if err != nil {
		return fmt.Errorf("egress rules: lock %s: %w", l.Path(), err)
	}
	defer l.Unlock()
	return fn()
}

// List returns the stored rules: canonical, deduplicated and sorted by dst,
// then proto, then port. A missing file is an empty list; a bad rule in a
// hand-edited file is an error naming the file, the rule's index and the
// field. Rules without an id are given one (see Store).
func (s *Store) List() ([]Entry, error) {
	var sn snapshot
	err := s.locked(false, func() (err error) {
		sn, err = s.load()
		return err
	})
	if err != nil {
		return nil, err
	}
	if !sn.missingIDs() {
		return sn.entries(), nil
	}
	var out []Entry
	err = s.locked(true, func() error {
		// Reloaded: another writer may have changed the files between the
		// two locks.
		sn, err := s.load()
		if err != nil {
			return err
		}
		out, err = s.commit(sn, sn.rules, nil)
		return err
	})
	return out, err
}

// Add adds or updates rules and returns, index-aligned with rules, ADDED
// (a new key), MODIFIED (an existing key with another action, or new or
// changed path rules) or UNCHANGED, and the whole list afterwards.
//
// Path rules merge into the stored rule by path: a path already there is
// replaced in place, a new one appended (the order decides ties, see the
// package comment), the others are kept; path_default changes only when
// the rule gives one. A rule without path rules and with the stored action
// leaves the stored path rules alone; with another action it replaces the
// rule, path rules included. Any invalid rule rejects the whole batch
// (nothing is written, the error joins a *FieldError per bad field); a batch
// that changes nothing writes nothing.
//
// A key given twice in one batch: the rules take effect in order, so the
// later one wins, and each reports its status against the state the earlier
// ones left ([a allow, a deny] on an empty store: ADDED, MODIFIED; the store
// holds a deny). The file is written when the end state differs from the
// start, whatever the statuses say.
func (s *Store) Add(rules []Rule) ([]Status, []Entry, error) {
	canon, err := Validate(rules)
	if err != nil {
		return nil, nil, err
	}
	statuses := make([]Status, len(canon))
	var out []Entry
	err = s.locked(true, func() error {
		sn, err := s.load()
		if err != nil {
			return err
		}
		byKey := make(map[string]Rule, len(sn.rules)+len(canon))
		for _, r := range sn.rules {
			byKey[r.key()] = r
		}
		for i, r := range canon {
			k := r.key()
			old, exists := byKey[k]
			next := r
			if exists {
				next = mergeRule(old, r, rules[i].PathDefault != "")
			}
			switch {
			case !exists:
				statuses[i] = Added
			case !old.Equal(next):
				statuses[i] = Modified
			default:
				statuses[i] = Unchanged
			}
			byKey[k] = next
		}
		out, err = s.commit(sn, sortedRules(byKey), canon)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return statuses, out, nil
}

// mergeRule is the stored rule old after adding r (canonical, same key);
// pathDefaultGiven says whether r's path_default was written or defaulted.
func mergeRule(old, r Rule, pathDefaultGiven bool) Rule {
	if len(r.PathRules) == 0 {
		if r.Action == old.Action {
			return old
		}
		return r
	}
	merged := old
	merged.Action = r.Action
	merged.PathRules = slices.Clone(old.PathRules)
	for _, pr := range r.PathRules {
		if j := slices.IndexFunc(merged.PathRules, func(x PathRule) bool { return x.Path == pr.Path }); j >= 0 {
			merged.PathRules[j] = pr
		} else {
			merged.PathRules = append(merged.PathRules, pr)
		}
	}
	if pathDefaultGiven || len(old.PathRules) == 0 {
		merged.PathDefault = r.PathDefault
	}
	return merged
}

// Remove removes the rule with r's key (defaults applied, action and path
// rules ignored) and returns REMOVED or NOT_FOUND with the list afterwards.
func (s *Store) Remove(r Rule) (Status, []Entry, error) {
	r.Action, r.PathRules, r.PathDefault = "", nil, ""
	c, err := r.Canonical()
	if err != nil {
		return "", nil, err
	}
	key := c.key()
	status := NotFound
	var out []Entry
	err = s.locked(true, func() error {
		sn, err := s.load()
		if err != nil {
			return err
		}
		kept := slices.DeleteFunc(slices.Clone(sn.rules), func(x Rule) bool { return x.key() == key })
		if len(kept) < len(sn.rules) {
			status = Removed
		}
		out, err = s.commit(sn, kept, nil)
		return err
	})
	if err != nil {
		return "", nil, err
	}
	return status, out, nil
}

// RemovePath removes the path rule with path (normalised as when it was
// added) from the rule with r's key (action and path rules ignored) and
// returns PATH_REMOVED, or NOT_FOUND when the rule or the path is not
// stored, with the list afterwards. Removing the last path rule leaves a
// plain rule, without path_default: its connections are no longer
// inspected.
func (s *Store) RemovePath(r Rule, path string) (Status, []Entry, error) {
	r.Action, r.PathRules, r.PathDefault = "", nil, ""
	c, err := r.Canonical()
	if err != nil {
		return "", nil, err
	}
	pr, perrs := PathRule{Path: path}.canonical()
	for _, e := range perrs {
		if e.sub == fieldPath {
			return "", nil, &FieldError{Index: -1, Field: fieldPath, Value: e.value, Msg: e.msg}
		}
	}
	key := c.key()
	status := NotFound
	var out []Entry
	err = s.locked(true, func() error {
		sn, err := s.load()
		if err != nil {
			return err
		}
		rules := slices.Clone(sn.rules)
		for i := range rules {
			if rules[i].key() != key {
				continue
			}
			j := slices.IndexFunc(rules[i].PathRules, func(x PathRule) bool { return x.Path == pr.Path })
			if j < 0 {
				break
			}
			status = PathRemoved
			rules[i].PathRules = slices.Delete(slices.Clone(rules[i].PathRules), j, j+1)
			if len(rules[i].PathRules) == 0 {
				rules[i].PathRules, rules[i].PathDefault = nil, ""
			}
		}
		out, err = s.commit(sn, rules, nil)
		return err
	})
	if err != nil {
		return "", nil, err
	}
	return status, out, nil
}

// RemoveAll removes every rule and returns how many there were, and the
// (empty) list afterwards.
func (s *Store) RemoveAll() (int, []Entry, error) {
	n := 0
	var out []Entry
	err := s.locked(true, func() error {
		sn, err := s.load()
		if err != nil {
			return err
		}
		n = len(sn.rules)
		out, err = s.commit(sn, nil, nil)
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	return n, out, nil
}

func sortedRules(byKey map[string]Rule) []Rule {
	out := slices.Collect(maps.Values(byKey))
	slices.SortFunc(out, compareRules)
	return out
}

// compareRules orders rules by dst, then proto, then port (numerically).
func compareRules(a, b Rule) int {
	return cmp.Or(
		strings.Compare(a.Dst, b.Dst),
		strings.Compare(string(a.Proto), string(b.Proto)),
		cmp.Compare(a.Port.Lo, b.Port.Lo),
		cmp.Compare(a.Port.Hi, b.Port.Hi),
		slices.Compare(a.Projects, b.Projects),
		strings.Compare(string(a.Action), string(b.Action)),
	)
}

// decodeProjects reads a rule's projects: a list of names, or one name.
func decodeProjects(n *yaml.Node, index int, errs []*FieldError) ([]string, []*FieldError) {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" || n.Value == "" {
			return nil, errs
		}
		return []string{n.Value}, errs
	case yaml.SequenceNode:
		var out []string
		for j, item := range n.Content {
			item = resolveAlias(item)
			if item.Kind != yaml.ScalarNode {
				errs = append(errs, &FieldError{Index: index, Field: fmt.Sprintf("%s[%d]", fieldProjects, j), Value: item.Value,
					Msg: "not a project name (write projects: [api, web])"})
				continue
			}
			out = append(out, item.Value)
		}
		return out, errs
	}
	return nil, append(errs, &FieldError{Index: index, Field: fieldProjects, Value: n.Value,
		Msg: "not a list of project names (write projects: [api, web])"})
}

// commit makes rules (canonical, sorted) the stored set, in the order that
// never leaves a stored rule without an id, and writes nothing when
// neither the rules nor their ids change. Rules that need an id get one in
// the order of firstIDs, then of rules. Caller holds the exclusive lock.
func (s *Store) commit(sn snapshot, rules, firstIDs []Rule) ([]Entry, error) {
	if rules == nil {
		rules = []Rule{}
	}
	changed := !slices.EqualFunc(sn.rules, rules, Rule.Equal)
	next := snapshot{rules: rules, ids: idTable{Next: sn.ids.Next, IDs: maps.Clone(sn.ids.IDs)}}
	if next.ids.IDs == nil {
		next.ids.IDs = map[string]uint32{}
	}
	inRules := make(map[string]bool, len(rules))
	for _, r := range rules {
		inRules[r.key()] = true
	}
	assigned := false
	// New ids go out in the order the user gave the rules (first), then in
	// sorted order for rules from a hand edit.
	for _, r := range slices.Concat(firstIDs, rules) {
		k := r.key()
		if _, ok := next.ids.IDs[k]; !ok && inRules[k] {
			next.ids.IDs[k] = next.ids.Next
			next.ids.Next++
			assigned = true
		}
	}
	if !changed && !assigned {
		return next.entries(), nil
	}
	if assigned {
		if err := s.writeIDs(next.ids); err != nil {
			return nil, err
		}
	}
	if changed {
		if err := s.writeRules(rules); err != nil {
			return nil, err
		}
	}
	pruned := idTable{Next: next.ids.Next, IDs: make(map[string]uint32, len(rules))}
	for _, r := range rules {
		pruned.IDs[r.key()] = next.ids.IDs[r.key()]
	}
	if len(pruned.IDs) != len(next.ids.IDs) {
		if err := s.writeIDs(pruned); err != nil {
			return nil, err
		}
	}
	return next.entries(), nil
}

// load reads both files. Caller holds the lock.
func (s *Store) load() (snapshot, error) {
	rules, err := readRulesFile(s.RulesPath())
	if err != nil {
		return snapshot{}, err
	}
	ids, err := readIDsFile(s.IDsPath())
	if err != nil {
		return snapshot{}, err
	}
	return snapshot{rules: rules, ids: ids}, nil
}

func readRulesFile(path string) ([]Rule, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return []Rule{}, nil
	}
	if err != nil {
		return nil, err
	}
	rules, err := parseRules(data)
	if err != nil {
		return nil, &FileError{Path: path, Err: err}
	}
	return rules, nil
}

// parseRules reads a rules file field by field rather than into []Rule, so
// that a bad value anywhere is reported with its rule's index and field
// (a decoder error would name neither), every one of them at once.
func parseRules(data []byte) ([]Rule, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return []Rule{}, nil // empty or comments only
	}
	root := resolveAlias(doc.Content[0])
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return []Rule{}, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the file must be a mapping with a rules: list", root.Line)
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		key := root.Content[i]
		if key.Value != "rules" {
			return nil, fmt.Errorf("line %d: unknown key %q (the file holds one key, rules:)", key.Line, key.Value)
		}
		list = resolveAlias(root.Content[i+1])
	}
	if list == nil || (list.Kind == yaml.ScalarNode && list.Tag == "!!null") {
		return []Rule{}, nil
	}
	if list.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("line %d: rules must be a list (write rules:\\n  - dst: example.com)", list.Line)
	}

	var errs []error
	raw := make([]Rule, len(list.Content))
	for i, item := range list.Content {
		item = resolveAlias(item)
		ruleErrs := decodeRule(item, i, &raw[i])
		if item.Kind != yaml.MappingNode {
			errs = append(errs, ruleErrs[0])
			continue
		}
		bad := map[string]bool{}
		for _, e := range ruleErrs {
			bad[e.Field] = true
			errs = append(errs, e)
		}
		var c Rule
		for _, e := range raw[i].canonicalInto(&c, i) {
			// A field that did not decode has been reported already, and
			// so has a path rule that was not a mapping (path_rules[j]).
			fe := e.(*FieldError)
			parent, _, _ := strings.Cut(fe.Field, ".")
			if !bad[fe.Field] && !bad[parent] {
				errs = append(errs, e)
			}
		}
		raw[i] = c
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return dedupe(raw), nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// decodeRule reads one rule mapping into *out.
func decodeRule(n *yaml.Node, index int, out *Rule) []*FieldError {
	if n.Kind != yaml.MappingNode {
		return []*FieldError{{Index: index, Field: "rule", Value: n.Value,
			Msg: "not a mapping (write - dst: example.com, with proto, port and action optional)"}}
	}
	var errs []*FieldError
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		field, val := n.Content[i].Value, resolveAlias(n.Content[i+1])
		fail := func(msg string) {
			errs = append(errs, &FieldError{Index: index, Field: field, Value: val.Value, Msg: msg})
		}
		if seen[field] {
			fail("given twice in one rule (keep one)")
			continue
		}
		seen[field] = true
		switch field {
		case fieldPathRules:
			out.PathRules, errs = decodePathRules(val, index, out.PathRules, errs)
			continue
		case fieldProjects:
			out.Projects, errs = decodeProjects(val, index, errs)
			continue
		case fieldDst, fieldProto, fieldAction, fieldPort, fieldPathDefault:
		default:
			// Named as an unknown field whatever its value's shape (an
			// empty key with a list under it would otherwise name nothing).
			fail("unknown field (the fields are dst, proto, port, action, path_rules, path_default and projects)")
			continue
		}
		if val.Kind != yaml.ScalarNode {
			fail("not a single value (write dst: example.com, proto: https, port: 443 or 8000-8100, action: allow or deny)")
			continue
		}
		value := val.Value
		if val.Tag == "!!null" {
			value = ""
		}
		switch field {
		case fieldDst:
			out.Dst = value
		case fieldProto:
			out.Proto = Proto(value)
		case fieldAction:
			out.Action = Action(value)
		case fieldPathDefault:
			out.PathDefault = Action(value)
		case fieldPort:
			p, err := ParsePortRange(value)
			if err != nil {
				fe := err.(*FieldError)
				fe.Index = index
				errs = append(errs, fe)
				continue
			}
			out.Port = p
		default:
			fail("unknown field (the fields are dst, proto, port, action, path_rules, path_default and projects)")
		}
	}
	if !seen[fieldDst] {
		errs = append(errs, &FieldError{Index: index, Field: fieldDst, Value: "",
			Msg: "missing " + dstFix})
	}
	return errs
}

// decodePathRules reads a rule's path_rules list (each item a mapping of
// path, action and methods) and appends what is wrong to errs, one
// *FieldError naming path_rules[j].field per problem.
func decodePathRules(n *yaml.Node, index int, out []PathRule, errs []*FieldError) ([]PathRule, []*FieldError) {
	const fix = "(write path_rules:\n  - path: /v1/\n    action: allow\n    methods: [GET, POST])"
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil, errs
	}
	if n.Kind != yaml.SequenceNode {
		return out, append(errs, &FieldError{Index: index, Field: fieldPathRules, Value: n.Value, Msg: "not a list " + fix})
	}
	out = make([]PathRule, len(n.Content))
	for j, item := range n.Content {
		item = resolveAlias(item)
		if item.Kind != yaml.MappingNode {
			errs = append(errs, &FieldError{Index: index, Field: fieldPathRules + "[" + fmt.Sprint(j) + "]", Value: item.Value, Msg: "not a mapping " + fix})
			continue
		}
		seen := map[string]bool{}
		for k := 0; k+1 < len(item.Content); k += 2 {
			sub, val := item.Content[k].Value, resolveAlias(item.Content[k+1])
			field := pathRuleField(j, sub)
			fail := func(msg string) {
				errs = append(errs, &FieldError{Index: index, Field: field, Value: val.Value, Msg: msg})
			}
			if seen[sub] {
				fail("given twice in one path rule (keep one)")
				continue
			}
			seen[sub] = true
			if sub != fieldPath && sub != fieldAction && sub != fieldMethods {
				fail("unknown field (the fields of a path rule are path, action and methods)")
				continue
			}
			if sub == fieldMethods {
				switch {
				case val.Kind == yaml.ScalarNode && val.Tag == "!!null":
				case val.Kind == yaml.SequenceNode:
					for _, m := range val.Content {
						m = resolveAlias(m)
						if m.Kind != yaml.ScalarNode {
							fail("not a list of methods (write methods: [GET, POST])")
							break
						}
						out[j].Methods = append(out[j].Methods, m.Value)
					}
				default:
					fail("not a list of methods (write methods: [GET, POST])")
				}
				continue
			}
			if val.Kind != yaml.ScalarNode {
				fail("not a single value (write path: /v1/ or path: ~^/v[0-9]+/, action: allow or deny)")
				continue
			}
			value := val.Value
			if val.Tag == "!!null" {
				value = ""
			}
			if sub == fieldPath {
				out[j].Path = value
			} else {
				out[j].Action = Action(value)
			}
		}
		if !seen[fieldPath] {
			errs = append(errs, &FieldError{Index: index, Field: pathRuleField(j, fieldPath), Value: "",
				Msg: "missing (write path: /v1/, or ~ and a regular expression)"})
		}
	}
	return out, errs
}

// dedupe sorts canonical rules and keeps one per key. Two actions for one
// key (only a hand edit can do that) keep deny, as the policy would: at
// equal specificity deny wins.
func dedupe(rules []Rule) []Rule {
	byKey := make(map[string]Rule, len(rules))
	for _, r := range rules {
		k := r.key()
		if old, ok := byKey[k]; ok && old.Action == Deny {
			continue
		}
		byKey[k] = r
	}
	return sortedRules(byKey)
}

func readIDsFile(path string) (idTable, error) {
	t := idTable{Next: 1, IDs: map[string]uint32{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return t, nil
	}
	if err != nil {
		return t, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var read idTable
	if err := dec.Decode(&read); err != nil && !errors.Is(err, io.EOF) {
		return t, &FileError{Path: path, Err: err}
	}
	keyOf := map[uint32]string{}
	maxID := uint32(0)
	for k, id := range read.IDs {
		if id == 0 {
			return t, &FileError{Path: path, Err: fmt.Errorf("%s: id 0 (ids start at 1)", k)}
		}
		if other, dup := keyOf[id]; dup {
			a, b := min(k, other), max(k, other)
			return t, &FileError{Path: path, Err: fmt.Errorf("id %d is given to both %s and %s", id, a, b)}
		}
		keyOf[id] = k
		maxID = max(maxID, id)
		t.IDs[k] = id
	}
	// A next at or below a used id (a hand edit) would hand that id out
	// again; moving it past the largest is always safe.
	t.Next = max(read.Next, maxID+1, 1)
	return t, nil
}

// encodeRules is the rules file's content for rules.
func encodeRules(rules []Rule) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(rulesHeader)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(struct {
		Rules []Rule `yaml:"rules"`
	}{rules}); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func (s *Store) writeRules(rules []Rule) error {
	b, err := encodeRules(rules)
	if err != nil {
		return err
	}
	return writeFileAtomic(s.dir, RulesFileName, b)
}

func (s *Store) writeIDs(t idTable) error {
	var b bytes.Buffer
	b.WriteString(idsHeader)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(t); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	return writeFileAtomic(s.dir, IDsFileName, b.Bytes())
}

// testBeforeWrite lets tests fail a write, as a crash between the two files
// would. Always nil outside tests.
var testBeforeWrite func(name string) error

// writeFileAtomic replaces dir/name with data (0600): the old file or the
// new one, never a part, even across a crash (atomicfile.Write).
func writeFileAtomic(dir, name string, data []byte) error {
	if testBeforeWrite != nil {
		if err := testBeforeWrite(name); err != nil {
			return err
		}
	}
	return atomicfile.Write(filepath.Join(dir, name), data, 0o600)
}
