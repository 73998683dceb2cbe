package netlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	"go.opentelemetry.io/otel/sdk/resource"
)

// The stack siblings' lines go out on the pipeline's one batch processor
// and connection, as records of their own service.name: a resource is a
// provider's, so each sibling has a provider of its own that shares the
// processor (the exporter groups a batch by resource). Those providers
// are never shut down themselves: they own nothing but the reference,
// and the pipeline's own provider flushes and stops the shared processor.
const (
	ServiceDNS   = "clawker-dns"
	ServiceProxy = "clawker-proxy"
	// SiblingScopeName is the scope of the siblings' records.
	SiblingScopeName = "clawker.netlogger.siblings"
)

// Event names of the proxy's access-log records (its "kind" field: a
// connection line has none, a path-decided request line is "request").
const (
	EventProxyConnection = "proxy.connection"
	EventProxyRequest    = "proxy.request"
	// EventDNSQuery is a DNS sibling's query-log line (clawker-dns
	// --query-log: one JSON object per decided query on its stdout).
	EventDNSQuery = "dns.query"
)

// Line is one line a sibling wrote, as its container's log gives it.
type Line struct {
	Service     string // ServiceDNS or ServiceProxy
	ContainerID string
	Stderr      bool
	Time        time.Time // the daemon's timestamp of the line
	Text        []byte    // without the newline; only read during the call
}

type siblingLoggers map[string]log.Logger

func newSiblingLoggers(bp sdklog.Processor, hostName string) siblingLoggers {
	out := siblingLoggers{}
	for _, svc := range []string{ServiceDNS, ServiceProxy} {
		res := resource.NewSchemaless(attribute.String("service.name", svc), attribute.String("host.name", hostName))
		lp := sdklog.NewLoggerProvider(sdklog.WithResource(res), sdklog.WithProcessor(bp), sdklog.WithAllowKeyDuplication())
		out[svc] = lp.Logger(SiblingScopeName)
	}
	return out
}

// ErrUnknownService is EmitLine's answer for a line of no sibling.
var ErrUnknownService = errors.New("netlog: not a sibling's service name")

// EmitLine hands one sibling line to the batch processor, or drops and
// counts it when Buffer records are already waiting for the collector
// (the same bound and counters as the ring's records). It never blocks.
func (p *Pipeline) EmitLine(l *Line) error {
	lg, ok := p.siblings[l.Service]
	if !ok {
		return ErrUnknownService
	}
	p.lines.Add(1)
	if p.closing.Load() || p.emitted.Load()-p.exported.Load()-p.failed.Load() >= uint64(p.cfg.Buffer) {
		p.dropped.Add(1)
		if p.down.Load() {
			p.droppedDown.Add(1)
		}
		return nil
	}
	var r log.Record
	BuildLine(&r, l, time.Now())
	p.emitted.Add(1)
	lg.Emit(context.Background(), r)
	return nil
}

// BuildLine fills r from one sibling line: a proxy access-log line or a
// DNS query-log line (a JSON object on the sibling's stdout) becomes a
// record with each of its fields as an attribute of the same name; any other line a record with
// the text as its body and the severity the line itself states, INFO
// when it states none (a line on stderr is not an error by that alone:
// both siblings write their diagnostics there).
func BuildLine(r *log.Record, l *Line, observed time.Time) {
	r.SetTimestamp(l.Time)
	r.SetObservedTimestamp(observed)
	stream := "stdout"
	if l.Stderr {
		stream = "stderr"
	}
	var kv [32]attribute.KeyValue
	a := append(kv[:0], attribute.String("log.iostream", stream))
	if l.ContainerID != "" {
		// The semantic conventions' name for the emitting container: the
		// ebpf-egress records' container_id is the agent's.
		a = append(a, attribute.String("container.id", l.ContainerID))
	}
	if (l.Service == ServiceProxy || l.Service == ServiceDNS) && !l.Stderr {
		if fields, kind, ok := DecodeAccessLine(l.Text, a); ok && (l.Service != ServiceDNS || isQueryLine(fields[len(a):])) {
			switch {
			case l.Service == ServiceDNS:
				r.SetEventName(EventDNSQuery)
			case kind == "request":
				r.SetEventName(EventProxyRequest)
			default:
				r.SetEventName(EventProxyConnection)
			}
			r.SetSeverity(log.SeverityInfo)
			r.SetSeverityText("INFO")
			r.AddAttributes(fields...)
			return
		}
	}
	sev, text := GuessSeverity(l.Text)
	r.SetSeverity(sev)
	r.SetSeverityText(text)
	r.SetBody(attribute.StringValue(string(l.Text)))
	r.AddAttributes(a...)
}

// isQueryLine tells a DNS query-log line from any other JSON object on
// the DNS sibling's stdout: it always carries qtype and verdict.
func isQueryLine(fields []attribute.KeyValue) bool {
	var qtype, verdict bool
	for _, kv := range fields {
		qtype = qtype || kv.Key == "qtype"
		verdict = verdict || kv.Key == "verdict"
	}
	return qtype && verdict
}

// DecodeAccessLine reads a proxy access-log line (one flat JSON object)
// (or a DNS query-log line) into attributes appended to a, in the line's
// order: strings, integers (bytes_up, status, ...), other numbers
// (duration_ms), booleans, arrays of strings (hosts, answers) and arrays
// of integers (rule_ids). The "kind" field is returned besides being
// an attribute. Fields the proxy adds later come through without a change
// here. ok is false for anything that is not such an object: that line is
// then logged as text.
func DecodeAccessLine(b []byte, a []attribute.KeyValue) (attrs []attribute.KeyValue, kind string, ok bool) {
	b = bytes.TrimSpace(b)
	if len(b) < 2 || b[0] != '{' {
		return a, "", false
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return a, "", false
	}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return a, "", false
		}
		key, _ := kt.(string)
		vt, err := dec.Token()
		if err != nil {
			return a, "", false
		}
		switch v := vt.(type) {
		case string:
			if key == "kind" {
				kind = v
			}
			a = append(a, attribute.String(key, v))
		case json.Number:
			if i, err := strconv.ParseInt(string(v), 10, 64); err == nil {
				a = append(a, attribute.Int64(key, i))
			} else if f, err := v.Float64(); err == nil {
				a = append(a, attribute.Float64(key, f))
			} else {
				return a, "", false
			}
		case bool:
			a = append(a, attribute.Bool(key, v))
		case nil:
		case json.Delim:
			if v != '[' {
				return a, "", false // a nested object: not an access line
			}
			var (
				ss []string
				is []int64
			)
			for dec.More() {
				et, err := dec.Token()
				if err != nil {
					return a, "", false
				}
				switch e := et.(type) {
				case string:
					ss = append(ss, e)
				case json.Number:
					i, err := strconv.ParseInt(string(e), 10, 64)
					if err != nil {
						return a, "", false
					}
					is = append(is, i)
				default:
					return a, "", false
				}
			}
			if _, err := dec.Token(); err != nil || (ss != nil && is != nil) {
				return a, "", false // a mixed array is no such line
			}
			if is != nil {
				a = append(a, attribute.Int64Slice(key, is))
			} else {
				a = append(a, attribute.StringSlice(key, ss))
			}
		}
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return a, "", false
	}
	if _, err := dec.Token(); err != io.EOF {
		return a, "", false // trailing text
	}
	return a, kind, true
}

// levelWords are the level spellings GuessSeverity trusts, in the forms
// [ERROR], level=error, "level":"error" and a leading ERROR / ERROR:.
var levelWords = []struct {
	word string
	sev  log.Severity
	text string
}{
	{"fatal", log.SeverityFatal, "FATAL"},
	{"panic", log.SeverityFatal, "FATAL"},
	{"error", log.SeverityError, "ERROR"},
	{"err", log.SeverityError, "ERROR"},
	{"warning", log.SeverityWarn, "WARN"},
	{"warn", log.SeverityWarn, "WARN"},
	{"info", log.SeverityInfo, "INFO"},
	{"debug", log.SeverityDebug, "DEBUG"},
}

// GuessSeverity reads the level a line states about itself near its
// start; a line stating none is INFO. It never guesses from words in the
// message ("failed", "error: ..." mid-line): those are too often
// routine.
func GuessSeverity(line []byte) (log.Severity, string) {
	head := line
	if len(head) > 96 {
		head = head[:96]
	}
	head = bytes.ToLower(head)
	for _, w := range levelWords {
		for _, form := range [...]string{"[" + w.word + "]", "level=" + w.word, `"level":"` + w.word + `"`} {
			if bytes.Contains(head, []byte(form)) {
				return w.sev, w.text
			}
		}
		lead := bytes.TrimLeft(head, " \t")
		if bytes.HasPrefix(lead, []byte(w.word)) && len(lead) > len(w.word) && (lead[len(w.word)] == ':' || lead[len(w.word)] == ' ') && w.word != "err" {
			return w.sev, w.text
		}
	}
	return log.SeverityInfo, "INFO"
}
