package stackapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/clawker/clawker-cp/pkg/egressrules"
)

// Client is a sibling's side of the service.
type Client struct {
	base string
	hc   *http.Client
	// Logf, when set, is told about failed polls (the watcher retries).
	Logf func(format string, args ...any)
}

// NewClient talks to the control plane's stack service at addr (ip:port).
func NewClient(addr string, tlsCfg *tls.Config) *Client {
	tr := &http.Transport{
		TLSClientConfig:     tlsCfg.Clone(),
		ForceAttemptHTTP2:   true,
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		TLSHandshakeTimeout: 3 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{base: "https://" + addr, hc: &http.Client{Transport: tr}}
}

func (c *Client) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

// Report hands the control plane the answers of one DNS reply and returns
// once it has made them known to the kernel.
func (c *Client) Report(ctx context.Context, answers []Answer) error {
	body, err := json.Marshal(answersBody{Answers: answers})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+AnswersPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("reporting answers: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("reporting answers: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// WatchPolicy fetches the policy and every later one, calling apply for
// each (from this goroutine, in order) until ctx ends. The next request
// carries the generation apply accepted: that is the acknowledgement the
// control plane waits for before it answers a rule change. A failed
// request is retried with a short backoff; a doc apply rejects is not
// acknowledged (the sibling keeps the policy it had).
func (c *Client) WatchPolicy(ctx context.Context, apply func(egressrules.Doc) error) error {
	var applied uint64
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		doc, changed, err := c.poll(ctx, applied)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			c.logf("policy poll failed (retrying in %s): %v", backoff, err)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if !changed {
			continue
		}
		if err := apply(doc); err != nil {
			c.logf("policy generation %d rejected: %v", doc.Generation, err)
			// Ask again later rather than spin on the same doc.
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
			}
			continue
		}
		applied = doc.Generation
	}
	return ctx.Err()
}

func (c *Client) poll(ctx context.Context, applied uint64) (egressrules.Doc, bool, error) {
	var doc egressrules.Doc
	pctx, cancel := context.WithTimeout(ctx, pollHold+10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(pctx, http.MethodGet, c.base+PolicyPath+"?applied="+strconv.FormatUint(applied, 10), nil)
	if err != nil {
		return doc, false, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return doc, false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent:
		return doc, false, nil
	case http.StatusOK:
		if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&doc); err != nil {
			return doc, false, fmt.Errorf("decoding policy: %w", err)
		}
		return doc, true, nil
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return doc, false, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
	}
}
