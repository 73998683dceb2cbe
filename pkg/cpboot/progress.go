package cpboot

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// Reporter shows the progress of EnsureRunning to a person. Steps run one
// at a time: Begin, then End.
type Reporter interface {
	// Begin announces a step ("building image clawker-controlplane:bin-…").
	Begin(step string)
	// End closes the current step: done with detail (the step's text when
	// empty) when err is nil, failed otherwise. The error is not printed:
	// EnsureRunning returns it and the caller reports it once.
	End(detail string, err error)
	// Note prints a remark that is not a step (a degraded mode, a wait).
	Note(msg string)
}

// NewReporter writes to w: a spinner and ✓/✗ marks when w is a terminal,
// plain lines otherwise.
func NewReporter(w io.Writer) Reporter {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return NewTTYReporter(w)
	}
	return NewPlainReporter(w)
}

type nopReporter struct{}

func (nopReporter) Begin(string)      {}
func (nopReporter) End(string, error) {}
func (nopReporter) Note(string)       {}

// PlainReporter prints one line per finished step, with its duration. A step
// still running after a second is announced, so a log shows what is being
// waited for.
type PlainReporter struct {
	mu    sync.Mutex
	w     io.Writer
	step  string
	start time.Time
	timer *time.Timer
	said  bool
}

// NewPlainReporter returns a PlainReporter writing to w.
func NewPlainReporter(w io.Writer) *PlainReporter { return &PlainReporter{w: w} }

// Begin implements Reporter.
func (r *PlainReporter) Begin(step string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopLocked()
	r.step, r.start, r.said = step, time.Now(), false
	r.timer = time.AfterFunc(time.Second, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.step == step && !r.said {
			fmt.Fprintf(r.w, "%s ...\n", step)
			r.said = true
		}
	})
}

// End implements Reporter.
func (r *PlainReporter) End(detail string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopLocked()
	if detail == "" {
		detail = r.step
	}
	d := fmtDuration(time.Since(r.start))
	if err != nil {
		// The error itself is the caller's to print, once.
		fmt.Fprintf(r.w, "failed: %s (%s)\n", r.step, d)
	} else {
		fmt.Fprintf(r.w, "%s (%s)\n", detail, d)
	}
	r.step = ""
}

// Note implements Reporter.
func (r *PlainReporter) Note(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.w, "note: %s\n", msg)
}

func (r *PlainReporter) stopLocked() {
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
}

// TTYReporter draws a spinner beside the running step and replaces it with
// ✓ or ✗ when the step ends.
type TTYReporter struct {
	mu    sync.Mutex
	w     io.Writer
	step  string
	start time.Time
	stop  chan struct{}
	done  chan struct{}
}

// NewTTYReporter returns a TTYReporter writing to w.
func NewTTYReporter(w io.Writer) *TTYReporter { return &TTYReporter{w: w} }

var spinnerFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// Begin implements Reporter.
func (r *TTYReporter) Begin(step string) {
	r.mu.Lock()
	r.stopSpinnerLocked()
	r.step, r.start = step, time.Now()
	r.stop, r.done = make(chan struct{}), make(chan struct{})
	stop, done := r.stop, r.done
	fmt.Fprintf(r.w, "\r\x1b[K%s %s", spinnerFrames[0], step)
	r.mu.Unlock()
	go func() {
		defer close(done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			case <-t.C:
				r.mu.Lock()
				fmt.Fprintf(r.w, "\r\x1b[K%s %s (%s)", spinnerFrames[i%len(spinnerFrames)], step, fmtDuration(time.Since(r.start)))
				r.mu.Unlock()
			}
		}
	}()
}

// End implements Reporter.
func (r *TTYReporter) End(detail string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopSpinnerLocked()
	if detail == "" {
		detail = r.step
	}
	d := fmtDuration(time.Since(r.start))
	if err != nil {
		fmt.Fprintf(r.w, "\r\x1b[K✗ %s (%s)\n", r.step, d)
	} else {
		fmt.Fprintf(r.w, "\r\x1b[K✓ %s (%s)\n", detail, d)
	}
	r.step = ""
}

// Note implements Reporter.
func (r *TTYReporter) Note(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Keep the spinner's line intact: the note goes above it.
	fmt.Fprintf(r.w, "\r\x1b[K! %s\n", msg)
	if r.step != "" {
		fmt.Fprintf(r.w, "%s %s", spinnerFrames[0], r.step)
	}
}

// stopSpinnerLocked stops the spinner goroutine; it must not hold r.mu while
// waiting, since the goroutine takes it to draw.
func (r *TTYReporter) stopSpinnerLocked() {
	if r.stop == nil {
		return
	}
	close(r.stop)
	done := r.done
	r.stop, r.done = nil, nil
	r.mu.Unlock()
	<-done
	r.mu.Lock()
}

func fmtDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	default:
		return d.Round(time.Second).String()
	}
}
