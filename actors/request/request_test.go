package request_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/clawker/clawker-cp/actors/request"
	"github.com/clawker/clawker-cp/pkg/testkit/actortest"
)

type question struct{ n int }
type answer struct{ n int }
type otherAnswer struct{}
type silent struct{}

// answerer answers a question with its double, silent with nothing, and
// anything else with an otherAnswer.
type answerer struct{}

func (answerer) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *question:
		ctx.Respond(&answer{n: 2 * m.n})
	case *silent:
	case *otherAnswer:
		ctx.Respond(&otherAnswer{})
	}
}

func spawn(t *testing.T) (*actor.ActorSystem, *actor.PID) {
	t.Helper()
	sys := actortest.System(t)
	return sys, sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return answerer{} }))
}

func TestAskTypedAnswer(t *testing.T) {
	sys, pid := spawn(t)
	got, err := request.Ask[*answer](context.Background(), request.Target{Sys: sys, PID: pid, Timeout: 5 * time.Second}, &question{n: 21})
	if err != nil || got.n != 42 {
		t.Fatalf("Ask = %+v, %v; want n=42", got, err)
	}
}

// An answer of another type is an error naming the request, the wanted and
// the received types; the call does not panic.
func TestAskWrongReplyType(t *testing.T) {
	sys, pid := spawn(t)
	got, err := request.Ask[*answer](context.Background(), request.Target{Sys: sys, PID: pid, Timeout: 5 * time.Second}, &otherAnswer{})
	if got != nil || !errors.Is(err, request.ErrWrongReply) {
		t.Fatalf("Ask = %v, %v; want ErrWrongReply", got, err)
	}
	var wr *request.WrongReplyError
	if !errors.As(err, &wr) || wr.Want != "*request_test.answer" || wr.Got != "*request_test.otherAnswer" || wr.Request != "*request_test.otherAnswer" {
		t.Fatalf("error %#v", err)
	}
	for _, name := range []string{"*request_test.answer", "*request_test.otherAnswer"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("%q does not name %s", err, name)
		}
	}
	// An interface type as the wanted answer is named too.
	_, err = request.Ask[error](context.Background(), request.Target{Sys: sys, PID: pid, Timeout: 5 * time.Second}, &question{n: 1})
	if !strings.Contains(err.Error(), "want error") || !strings.Contains(err.Error(), "*request_test.answer") {
		t.Errorf("interface want: %v", err)
	}
}

// No answer is protoactor's ErrTimeout, as it was before the helper.
func TestAskTimeout(t *testing.T) {
	sys, pid := spawn(t)
	got, err := request.Ask[*answer](context.Background(), request.Target{Sys: sys, PID: pid, Timeout: 50 * time.Millisecond}, &silent{})
	if got != nil || !errors.Is(err, actor.ErrTimeout) || err.Error() != "future: timeout" {
		t.Fatalf("Ask = %v, %v; want future: timeout", got, err)
	}
}

// A caller whose context ends stops waiting with the context's error.
func TestAskContextCancelled(t *testing.T) {
	sys, pid := spawn(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := request.Ask[*answer](ctx, request.Target{Sys: sys, PID: pid, Timeout: time.Hour}, &silent{})
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Ask after cancel: %v", err)
	}
}

// A stopped actor answers through dead letters; a nil PID is ErrNoActor.
func TestAskNoActor(t *testing.T) {
	sys, pid := spawn(t)
	if err := sys.Root.StopFuture(pid).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := request.Ask[*answer](context.Background(), request.Target{Sys: sys, PID: pid, Timeout: 5 * time.Second}, &question{}); !errors.Is(err, actor.ErrDeadLetter) {
		t.Errorf("stopped actor: %v, want ErrDeadLetter", err)
	}
	if _, err := request.Ask[*answer](context.Background(), request.Target{Sys: sys, Timeout: time.Second}, &question{}); !errors.Is(err, request.ErrNoActor) ||
		!strings.Contains(err.Error(), "*request_test.question") {
		t.Errorf("nil pid: %v, want ErrNoActor naming the request", err)
	}
}

// asker asks from within its own Receive with Reenter and reports what
// came back on a channel.
type asker struct {
	target *actor.PID
	msg    any
	out    chan<- result
}

type result struct {
	a   *answer
	err error
}

type go_ struct{}

func (a *asker) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(*go_); ok {
		request.Reenter(ctx, a.target, a.msg, 200*time.Millisecond, func(r *answer, err error) { a.out <- result{r, err} })
	}
}

func TestReenter(t *testing.T) {
	sys, pid := spawn(t)
	for _, tc := range []struct {
		name   string
		target *actor.PID
		msg    any
		check  func(result) bool
	}{
		{"typed", pid, &question{n: 4}, func(r result) bool { return r.err == nil && r.a.n == 8 }},
		{"wrong type", pid, &otherAnswer{}, func(r result) bool { return r.a == nil && errors.Is(r.err, request.ErrWrongReply) }},
		{"timeout", pid, &silent{}, func(r result) bool { return r.a == nil && errors.Is(r.err, actor.ErrTimeout) }},
		{"nil pid", nil, &question{}, func(r result) bool { return r.a == nil && errors.Is(r.err, request.ErrNoActor) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := make(chan result, 1)
			a := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return &asker{target: tc.target, msg: tc.msg, out: out} }))
			sys.Root.Send(a, &go_{})
			if r := <-out; !tc.check(r) {
				t.Errorf("got %+v", r)
			}
		})
	}
}

// BenchmarkAsk compares one typed Ask with the bare RequestFuture it wraps.
func BenchmarkAsk(b *testing.B) {
	sys := actortest.System(b)
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return answerer{} }))
	t := request.Target{Sys: sys, PID: pid, Timeout: 5 * time.Second}
	b.Run("RequestFuture", func(b *testing.B) {
		for b.Loop() {
			res, err := sys.Root.RequestFuture(pid, &question{n: 1}, t.Timeout).Result()
			if _, ok := res.(*answer); err != nil || !ok {
				b.Fatal(res, err)
			}
		}
	})
	b.Run("Ask", func(b *testing.B) {
		for b.Loop() {
			if _, err := request.Ask[*answer](context.Background(), t, &question{n: 1}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Ask with a cancellable context", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for b.Loop() {
			if _, err := request.Ask[*answer](ctx, t, &question{n: 1}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
