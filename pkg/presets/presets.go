// Package presets is the list of egress rule presets `clawker firewall add
// --preset NAME` adds: for each registry or service agents commonly need,
// the egressrules rules that open it. The list is presets.yaml, embedded.
package presets

import (
	"bytes"
	_ "embed"
	"fmt"
	"sort"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

//go:embed presets.yaml
var presetsYAML []byte

// Preset is a named list of egress rules.
type Preset struct {
	Name        string             `yaml:"name"`
	Description string             `yaml:"description"`
	Rules       []egressrules.Rule `yaml:"rules"`
}

// parse reads the embedded file. A bad file is a defect of this build,
// which the package's tests catch, so All panics on it.
var parse = sync.OnceValues(func() ([]Preset, error) { return Parse(presetsYAML) })

// Parse reads a presets file: a YAML list of presets, each valid
// (egressrules.Validate), with unique names and at least one rule. The
// presets come back sorted by name, their rules in canonical form.
func Parse(data []byte) ([]Preset, error) {
	var list []Preset
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&list); err != nil {
		return nil, fmt.Errorf("presets: %w", err)
	}
	seen := map[string]bool{}
	for i := range list {
		p := &list[i]
		switch {
		case p.Name == "":
			return nil, fmt.Errorf("presets[%d]: no name", i)
		case seen[p.Name]:
			return nil, fmt.Errorf("presets[%d]: %s given twice", i, p.Name)
		case len(p.Rules) == 0:
			return nil, fmt.Errorf("preset %s: no rules", p.Name)
		}
		seen[p.Name] = true
		rules, err := egressrules.Validate(p.Rules)
		if err != nil {
			return nil, fmt.Errorf("preset %s: %w", p.Name, err)
		}
		p.Rules = rules
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return list, nil
}

// All returns every preset, sorted by name; the caller may modify the
// result.
func All() []Preset {
	list, err := parse()
	if err != nil {
		panic(err)
	}
	out := make([]Preset, len(list))
	for i, p := range list {
		p.Rules = append([]egressrules.Rule(nil), p.Rules...)
		out[i] = p
	}
	return out
}

// Names lists the presets' names, sorted.
func Names() []string {
	var names []string
	for _, p := range All() {
		names = append(names, p.Name)
	}
	return names
}

// Lookup returns the preset called name.
func Lookup(name string) (Preset, bool) {
	for _, p := range All() {
		if p.Name == name {
			return p, true
		}
	}
	return Preset{}, false
}

// UnknownError is Lookup's miss as the CLI reports it: the name and the
// known ones.
func UnknownError(name string) error {
	return fmt.Errorf("unknown preset %q; the presets are %s (see `clawker firewall presets`)", name, strings.Join(Names(), ", "))
}
