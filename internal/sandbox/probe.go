package sandbox

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// resolvePort turns a probe's int-or-name port into a number using the container's ports.
func resolvePort(p intstr.IntOrString, c *corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, p.StrVal)
}

// handler is what a probe or a lifecycle hook does; both have httpGet, tcpSocket and exec.
type handler struct {
	httpGet   *corev1.HTTPGetAction
	tcpSocket *corev1.TCPSocketAction
	exec      *corev1.ExecAction
	sleep     *corev1.SleepAction
}

// run performs h against a container of a pod at podIP in namespace netns. The host reaches
// the pod's address over the bridge, as a kubelet reaches its pods.
func (h handler) run(ctx context.Context, c *corev1.Container, netns, podIP string, env []string) error {
	switch {
	case h.httpGet != nil:
		port, err := resolvePort(h.httpGet.Port, c)
		if err != nil {
			return err
		}
		host := h.httpGet.Host
		if host == "" {
			host = podIP
		}
		scheme := "http"
		if h.httpGet.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort(host, strconv.Itoa(port))+h.httpGet.Path, nil)
		if err != nil {
			return err
		}
		for _, hd := range h.httpGet.HTTPHeaders {
			req.Header.Set(hd.Name, hd.Value)
		}
		req.Header.Set("User-Agent", "weft-dev-probe")
		resp, err := probeClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe got status %d", resp.StatusCode)
		}
		return nil
	case h.tcpSocket != nil:
		port, err := resolvePort(h.tcpSocket.Port, c)
		if err != nil {
			return err
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(podIP, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case h.exec != nil:
		if len(h.exec.Command) == 0 {
			return fmt.Errorf("exec has no command")
		}
		cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", netns}, h.exec.Command...)...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("exec %v: %w: %.200s", h.exec.Command, err, out)
		}
		return nil
	case h.sleep != nil:
		t := time.NewTimer(time.Duration(h.sleep.Seconds) * time.Second)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		return nil
	}
	return fmt.Errorf("weft dev supports httpGet, tcpSocket, exec and sleep handlers only")
}

// probeClient neither follows the environment's proxy nor keeps connections: a probe is a
// fresh dial each time, as with the kubelet.
var probeClient = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func probeHandler(p *corev1.Probe) handler {
	return handler{httpGet: p.HTTPGet, tcpSocket: p.TCPSocket, exec: p.Exec}
}

func hookHandler(h *corev1.LifecycleHandler) handler {
	return handler{httpGet: h.HTTPGet, tcpSocket: h.TCPSocket, exec: h.Exec, sleep: h.Sleep}
}

func secondsOr(v int32, def int32) time.Duration {
	if v <= 0 {
		v = def
	}
	return time.Duration(v) * time.Second
}
