//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/contract"
)

// packetSocket opens an AF_PACKET socket (IPv4 packets, no link header) inside the
// network namespace of pid: it sees every packet of the pod's links, both ways.
func packetSocket(pid int) (int, error) {
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the namespace it joined
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			ch <- res{-1, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- res{-1, fmt.Errorf("setns: %w", err)}
			return
		}
		proto := int(htons(unix.ETH_P_IP))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, proto)
		ch <- res{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// linkPayloads reads packets from fd until deadline and returns the TCP payloads sent to
// port.
func linkPayloads(fd int, port uint16, deadline time.Time) [][]byte {
	return linkPayloadsTo(fd, nil, port, deadline)
}

// linkPayloadsTo is linkPayloads for packets to dst only (nil: any address): the pod IP
// leaves out the sidecar's own plaintext hop to the app on the loopback.
func linkPayloadsTo(fd int, dst net.IP, port uint16, deadline time.Time) [][]byte {
	var out [][]byte
	buf := make([]byte, 65536)
	for time.Now().Before(deadline) {
		tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil || n < 20 {
			continue
		}
		p := buf[:n]
		ihl := int(p[0]&0x0f) * 4
		if p[9] != unix.IPPROTO_TCP || len(p) < ihl+20 {
			continue
		}
		if dst != nil && !net.IP(p[16:20]).Equal(dst) {
			continue
		}
		tcp := p[ihl:]
		if binary.BigEndian.Uint16(tcp[2:4]) != port {
			continue
		}
		off := int(tcp[12]>>4) * 4
		total := int(binary.BigEndian.Uint16(p[2:4]))
		if total > len(p) {
			total = len(p)
		}
		if ihl+off < total {
			out = append(out, append([]byte(nil), p[ihl+off:total]...))
		}
	}
	return out
}

// TestMTLS: the manager keeps the mesh CA in weft-system/weft-ca; calls from the caller
// pod to the function hello travel between the two sidecars as TLS records (captured on
// the function pod's link: TLS handshake and application-data records to port 15006,
// never an HTTP request line), and the function's sidecar counts verified handshakes.
func TestMTLS(t *testing.T) {
	sec, err := cs.CoreV1().Secrets("weft-system").Get(context.Background(), "weft-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the mesh CA Secret: %v", err)
	}
	if !strings.Contains(string(sec.Data["roots.pem"]), "PRIVATE KEY") || !strings.Contains(string(sec.Data["ca.crt"]), "BEGIN CERTIFICATE") {
		t.Fatalf("weft-system/weft-ca holds keys %v, want roots.pem with a key and ca.crt", keys(sec.Data))
	}
	// The mesh may still be starting: the first calls wait for the caller pod and the
	// function's cold start.
	routed(t, "http://hello/", func(g tally) bool { return g.ByStatus["200"] == 20 })
	var pod corev1.Pod
	eventually(t, 2*time.Minute, "a ready hello pod", func() error {
		_, _ = callC(t, "http://hello/", 5, 5) // keep it up
		for _, p := range pods(t, "weft.dev/function=hello") {
			if readyRunning(p) {
				pod = p
				return nil
			}
		}
		return fmt.Errorf("none ready")
	})
	fd, err := packetSocket(containerPid(t, pod, "function"))
	if err != nil {
		t.Fatalf("packet socket in the hello pod: %v", err)
	}
	defer unix.Close(fd)
	done := make(chan []string, 1)
	go func() {
		var errs []string
		for range 5 {
			if got, err := callC(t, "http://hello/", 20, 4); err != nil || got.ByStatus["200"] != 20 {
				errs = append(errs, fmt.Sprintf("%+v %v", got, err))
			}
			time.Sleep(200 * time.Millisecond)
		}
		done <- errs
	}()
	payloads := linkPayloads(fd, contract.InboundPort, time.Now().Add(4*time.Second))
	if errs := <-done; len(errs) > 0 {
		t.Errorf("calls during the capture failed: %v", errs)
	}
	var handshake, appData, plainHTTP int
	for _, p := range payloads {
		switch {
		case len(p) >= 3 && p[0] == 0x16 && p[1] == 3:
			handshake++
		case len(p) >= 3 && p[0] == 0x17 && p[1] == 3:
			appData++
		}
		if bytes.Contains(p, []byte(" HTTP/1.1\r\n")) || bytes.Contains(p, []byte("PRI * HTTP/2")) {
			plainHTTP++
		}
	}
	t.Logf("pod %s link, port %d: %d payloads, %d TLS handshake records, %d application-data records, %d plaintext HTTP",
		pod.Name, contract.InboundPort, len(payloads), handshake, appData, plainHTTP)
	if appData == 0 || plainHTTP != 0 {
		t.Errorf("on the link: %d TLS application-data records and %d plaintext HTTP requests; want TLS only", appData, plainHTTP)
	}
	if n, err := sidecarStats(pod, "weft_inbound_tls_handshakes_total"); err != nil || n == 0 {
		t.Errorf("the function sidecar's verified handshakes: %v %v, want some", n, err)
	}
	if n, err := sidecarStats(pod, "weft_inbound_tls_handshake_errors_total"); err != nil || n != 0 {
		t.Errorf("the function sidecar's refused handshakes: %v %v, want 0", n, err)
	}
}

func keys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
