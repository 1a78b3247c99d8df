package async

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// callback POSTs a call's outcome to the caller's X-Callback-Url, if it gave one, with
// X-Call-Id, X-Function-Status and X-Duration-Seconds (OpenFaaS's headers) and the app's
// body. For a failed call (reason set) it adds X-Weft-Dead-Reason and X-Weft-Attempts;
// when the app never answered, X-Function-Status is the status a gateway would have given
// (502 unreachable, 504 timed out or expired). Delivery is retried CallbackAttempts times
// on connection errors, 429 and 5xx, then given up: the call itself is already settled.
func (c *Consumer) callback(work context.Context, call *call, res result, reason string, attempts int) {
	if call.callbackURL == "" {
		return
	}
	u, err := url.Parse(call.callbackURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		c.opts.Logger.Warn("async callback URL is not an absolute http(s) URL; not calling it", "call", call.id, "url", call.callbackURL)
		return
	}
	status := res.status
	body := res.body
	if status == 0 {
		status = http.StatusBadGateway
		if res.err == nil || errors.Is(res.err, errTimeout) {
			status = http.StatusGatewayTimeout
		}
	}
	if reason != "" && res.status == 0 {
		body = []byte(reason + "\n")
	}
	backoff := c.opts.CallbackBackoff
	var lastErr error
	for i := range c.opts.CallbackAttempts {
		if i > 0 {
			select {
			case <-work.Done():
				return
			case <-c.opts.Clock.After(backoff):
			}
			backoff *= 2
		}
		lastErr = c.postCallback(work, u.String(), call, res, status, body, reason, attempts)
		if lastErr == nil {
			c.stats.callbacksOK.Add(1)
			return
		}
	}
	c.stats.callbacksFailed.Add(1)
	c.opts.Logger.Warn("async callback not delivered", "call", call.id, "url", call.callbackURL, "attempts", c.opts.CallbackAttempts, "err", lastErr)
}

func (c *Consumer) postCallback(ctx context.Context, target string, call *call, res result, status int, body []byte, reason string, attempts int) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.CallbackTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if ct := res.header.Get("Content-Type"); ct != "" && res.status != 0 {
		req.Header.Set("Content-Type", ct)
	} else {
		req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	}
	req.Header.Set(HeaderCallID, call.id)
	req.Header.Set(HeaderFunctionStatus, strconv.Itoa(status))
	req.Header.Set(HeaderDuration, strconv.FormatFloat(res.took.Seconds(), 'f', 3, 64))
	if reason != "" {
		req.Header.Set(HeaderDeadReason, reason)
		req.Header.Set(HeaderAttempts, strconv.Itoa(attempts))
	}
	if res.truncated {
		req.Header.Set("X-Weft-Body-Truncated", "true")
	}
	resp, err := c.opts.CallbackClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	switch {
	case resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("callback answered %d", resp.StatusCode)
	default:
		c.opts.Logger.Warn("async callback refused the result; not retrying", "call", call.id, "status", resp.StatusCode)
		return nil
	}
}
