// Package request is the one way an actor's peers ask it something and
// wait for the answer. A request names the answer's Go type; an answer of
// another type, no answer in time, an actor that is not running and a
// caller that gave up all come back as errors, never as a panic of an
// unchecked type assertion.
//
// Each actor package wraps these in a small typed client (client.go next
// to the actor), so a call site reads registry.Client.Register, not
// "send something, cast what comes back".
package request

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// Errors of a request itself, as opposed to what the answer reports.
// protoactor's actor.ErrTimeout (no answer within the timeout) and
// actor.ErrDeadLetter (the target is not running) come back unwrapped, so
// the texts callers already log and tests assert stay as they were.
var (
	// ErrNoActor: the target PID is nil (the peer is not wired).
	ErrNoActor = errors.New("no actor to ask")
	// ErrWrongReply: the answer is not of the type the request expects;
	// the error is a *WrongReplyError naming both types.
	ErrWrongReply = errors.New("wrong reply type")
)

// WrongReplyError is an answer of an unexpected type.
type WrongReplyError struct {
	Request string // the request's type, e.g. "*registry.Get"
	Want    string // the answer's expected type
	Got     string // the type that came ("<nil>" for none)
}

func (e *WrongReplyError) Error() string {
	return fmt.Sprintf("unexpected answer %s to %s (want %s)", e.Got, e.Request, e.Want)
}

// Is makes errors.Is(err, ErrWrongReply) hold.
func (e *WrongReplyError) Is(target error) bool { return target == ErrWrongReply }

// Target is an actor to ask and how long to wait for each answer.
type Target struct {
	Sys     *actor.ActorSystem
	PID     *actor.PID
	Timeout time.Duration
}

// Ask sends msg to t.PID and waits for its answer, which must be an R. It
// waits at most t.Timeout, and no longer than ctx allows (then it returns
// ctx's error). Safe from any goroutine but an actor's own Receive, which
// must not block: there use Reenter.
func Ask[R any](ctx context.Context, t Target, msg any) (R, error) {
	var zero R
	if t.PID == nil || t.Sys == nil {
		return zero, fmt.Errorf("%T: %w", msg, ErrNoActor)
	}
	timeout := t.Timeout
	if dl, ok := ctx.Deadline(); ok {
		// The future lives no longer than the caller waits for it.
		timeout = min(timeout, max(time.Until(dl), time.Millisecond))
	}
	f := t.Sys.Root.RequestFuture(t.PID, msg, timeout)
	if ctx.Done() == nil {
		res, err := f.Result()
		return typed[R](msg, res, err)
	}
	type result struct {
		res any
		err error
	}
	// Result has no context; the goroutine ends with the future, at the
	// latest when timeout passes.
	ch := make(chan result, 1)
	go func() {
		res, err := f.Result()
		ch <- result{res, err}
	}()
	select {
	case r := <-ch:
		return typed[R](msg, r.res, r.err)
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// Reenter sends msg from within an actor and calls then on that actor's
// mailbox (protoactor's ReenterAfter) with the answer as an R, or the
// error Ask would return. The mailbox goes on with other messages
// meanwhile. A nil pid calls then at once with ErrNoActor.
func Reenter[R any](ctx actor.Context, pid *actor.PID, msg any, timeout time.Duration, then func(R, error)) {
	if pid == nil {
		var zero R
		then(zero, fmt.Errorf("%T: %w", msg, ErrNoActor))
		return
	}
	f := ctx.RequestFuture(pid, msg, timeout)
	ctx.ReenterAfter(f, func(res any, err error) { then(typed[R](msg, res, err)) })
}

// typed checks a future's outcome against R.
func typed[R any](msg, res any, err error) (R, error) {
	var zero R
	if err != nil {
		return zero, err
	}
	r, ok := res.(R)
	if !ok {
		return zero, &WrongReplyError{Request: fmt.Sprintf("%T", msg), Want: reflect.TypeFor[R]().String(), Got: fmt.Sprintf("%T", res)}
	}
	return r, nil
}
