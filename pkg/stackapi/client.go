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
	"net/url"
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
	return c.watch(ctx, apply, nil)
}

// WatchPolicyAndCA is WatchPolicy for the egress proxy: it also follows the
// firewall CA's fingerprint and calls setCA (before applying the policy
// that came with it) whenever the control plane's differs from the one
// setCA last accepted; setCA fetches it (FetchInspectCA). An empty
// fingerprint means the control plane has none.
func (c *Client) WatchPolicyAndCA(ctx context.Context, apply func(egressrules.Doc) error, setCA func(ctx context.Context, fingerprint string) error) error {
	return c.watch(ctx, apply, setCA)
}

func (c *Client) watch(ctx context.Context, apply func(egressrules.Doc) error, setCA func(context.Context, string) error) error {
	var applied uint64
	var heldCA string
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		doc, changed, ca, err := c.poll(ctx, applied, heldCA, setCA != nil)
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
		if setCA != nil && ca != heldCA {
			if err := setCA(ctx, ca); err != nil {
				c.logf("firewall CA %.16s not taken (retrying): %v", ca, err)
				select {
				case <-time.After(time.Second):
				case <-ctx.Done():
				}
				continue
			}
			heldCA = ca
		}
		if !changed || doc.Generation == applied {
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

func (c *Client) poll(ctx context.Context, applied uint64, heldCA string, withCA bool) (doc egressrules.Doc, changed bool, ca string, err error) {
	pctx, cancel := context.WithTimeout(ctx, pollHold+10*time.Second)
	defer cancel()
	u := c.base + PolicyPath + "?applied=" + strconv.FormatUint(applied, 10)
	if withCA {
		u += "&ca=" + url.QueryEscape(heldCA)
	}
	req, err := http.NewRequestWithContext(pctx, http.MethodGet, u, nil)
	if err != nil {
		return doc, false, heldCA, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return doc, false, heldCA, err
	}
	defer resp.Body.Close()
	ca = resp.Header.Get(InspectCAHeader)
	switch resp.StatusCode {
	case http.StatusNoContent:
		return doc, false, ca, nil
	case http.StatusOK:
		if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&doc); err != nil {
			return doc, false, heldCA, fmt.Errorf("decoding policy: %w", err)
		}
		return doc, true, ca, nil
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return doc, false, heldCA, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
	}
}
