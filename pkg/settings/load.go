package settings

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Load reads the settings file at path. A missing file yields Default(). A
// present file is overlaid onto Default() and then validated. Problems with
// the file's content are returned as *Error carrying File, Key and Line; I/O
// failures are returned wrapped.
func Load(path string) (Settings, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Default(), nil
	}
	if err != nil {
		return Settings{}, fmt.Errorf("reading settings: %w", err)
	}

	s, err := parse(data)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.File = path
		}
		return Settings{}, err
	}
	return s, nil
}

// parse overlays data onto Default() and validates the result.
//
// Rather than yaml.v3's struct decoding (whose KnownFields errors carry
// neither the dotted path nor a usable structure, and which would need
// pointer fields to tell an explicit `false` from an absent key), we walk the
// yaml.Node tree against the struct's yaml tags ourselves: only keys present
// in the file are assigned, and every error knows its full key and line.
func parse(data []byte) (Settings, error) {
	s := Default()

	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
		return s, nil // empty file or only comments
	} else if err != nil {
		return Settings{}, &Error{Msg: "invalid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ") + "; fix the syntax"}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Settings{}, &Error{Line: extra.Line, Msg: "contains more than one YAML document; keep a single document (remove the extra \"---\")"}
	}

	w := walker{lines: make(map[string]int)}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	if err := w.mapping(root, reflect.ValueOf(&s).Elem(), ""); err != nil {
		return Settings{}, err
	}

	if err := s.Validate(); err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Line = w.lines[e.Key]
		}
		return Settings{}, err
	}
	return s, nil
}

var durationType = reflect.TypeFor[time.Duration]()

// walker overlays a yaml.Node tree onto a struct, recording the line of each
// key it assigns so that later validation errors can point at it.
type walker struct {
	lines map[string]int
}

// mapping overlays mapping node n onto struct v; prefix is v's dotted key
// ("" at the root). A null node (e.g. a section whose children are all
// commented out) leaves v untouched.
func (w walker) mapping(n *yaml.Node, v reflect.Value, prefix string) error {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		what := "the file"
		if prefix != "" {
			what = prefix
		}
		return &Error{Key: prefix, Line: n.Line, Msg: fmt.Sprintf(
			"%s must be a mapping of keys to values (key: value), not %s", what, kindName(n))}
	}

	firstSeen := make(map[string]int)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := k.Value
		if prefix != "" {
			key = prefix + "." + k.Value
		}
		if line, dup := firstSeen[k.Value]; dup {
			return &Error{Key: key, Line: k.Line, Msg: fmt.Sprintf(
				"%s is set twice (lines %d and %d); keep only one", key, line, k.Line)}
		}
		firstSeen[k.Value] = k.Line

		f, ok := fieldByTag(v, k.Value)
		if !ok {
			return &Error{Key: key, Line: k.Line, Msg: fmt.Sprintf(
				"unknown key %q (line %d): remove it or fix its spelling", key, k.Line)}
		}
		w.lines[key] = k.Line

		var err error
		switch f.Kind() {
		case reflect.Struct:
			err = w.mapping(val, f, key)
		case reflect.Slice:
			err = stringList(deref(val), f, key)
		default:
			err = leaf(deref(val), f, key)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// stringList assigns a sequence of strings to v (the only list type in
// Settings). An empty list is kept empty: validation says what it needs.
func stringList(n *yaml.Node, v reflect.Value, key string) error {
	if isNull(n) {
		return &Error{Key: key, Line: n.Line, Msg: key + ": has no value; write a list such as [\"a\", \"b\"] or remove the key"}
	}
	if n.Kind != yaml.SequenceNode {
		return &Error{Key: key, Line: n.Line, Msg: fmt.Sprintf("%s: must be a list (- item per line, or [a, b]), not %s", key, kindName(n))}
	}
	out := make([]string, 0, len(n.Content))
	for i, item := range n.Content {
		item = deref(item)
		if item.Kind != yaml.ScalarNode || item.ShortTag() != "!!str" {
			return &Error{Key: key, Line: item.Line, Msg: fmt.Sprintf("%s: entry %d must be a string, not %s; quote it", key, i, kindName(item))}
		}
		out = append(out, item.Value)
	}
	v.Set(reflect.ValueOf(out))
	return nil
}

// leaf assigns scalar n to v. It insists on the YAML type resolved from the
// text (e.g. !!int for an int), so "7443.9" or a quoted "7443" is rejected
// rather than silently truncated or coerced. v still holds its default here,
// which makes a concrete example for the fix.
func leaf(n *yaml.Node, v reflect.Value, key string) error {
	fail := func(format string, args ...any) error {
		return &Error{Key: key, Line: n.Line, Msg: key + ": " + fmt.Sprintf(format, args...)}
	}
	if n.Kind != yaml.ScalarNode {
		return fail("must be a single value, not %s", kindName(n))
	}
	if isNull(n) {
		return fail("has no value; set one (the default is %v) or remove the key", format(v))
	}
	tag := n.ShortTag()

	switch {
	case v.Type() == durationType:
		if tag == "!!int" || tag == "!!float" {
			return fail("%s has no unit; write a duration such as %q", n.Value, n.Value+"s")
		}
		d, err := time.ParseDuration(n.Value)
		if tag != "!!str" || err != nil {
			return fail("%q is not a duration; write one with a unit, such as %q", n.Value, format(v))
		}
		v.SetInt(int64(d))
	case v.Kind() == reflect.Int:
		var i int
		if tag != "!!int" || n.Decode(&i) != nil {
			return fail("%q is not a whole number; write an unquoted number such as %v", n.Value, format(v))
		}
		v.SetInt(int64(i))
	case v.Kind() == reflect.Bool:
		var b bool
		if tag != "!!bool" || n.Decode(&b) != nil {
			return fail("%q is not a boolean; write true or false", n.Value)
		}
		v.SetBool(b)
	case v.Kind() == reflect.String:
		// Only strings written as such: a bare number or boolean here is
		// more likely a value put under the wrong key.
		if tag != "!!str" {
			return fail("%q is not a string; quote it", n.Value)
		}
		v.SetString(n.Value)
	default:
		// Only reachable if a field of an unsupported type is added to Settings.
		panic(fmt.Sprintf("settings: no decoder for %s (%s)", key, v.Type()))
	}
	return nil
}

// fieldByTag returns the field of struct v whose yaml tag name is name.
func fieldByTag(v reflect.Value, name string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag == name && tag != "" && tag != "-" {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// deref follows YAML aliases (*anchor) to the node they refer to.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	default:
		return fmt.Sprintf("the value %q", n.Value)
	}
}

// format renders a default value the way it would be written in the file.
func format(v reflect.Value) string {
	if v.Type() == durationType {
		// Drop zero trailing units: "1m" reads better than "1m0s".
		s := time.Duration(v.Int()).String()
		if t, ok := strings.CutSuffix(s, "m0s"); ok {
			s = t + "m"
		}
		if t, ok := strings.CutSuffix(s, "h0m"); ok {
			s = t + "h"
		}
		return s
	}
	return fmt.Sprint(v.Interface())
}
