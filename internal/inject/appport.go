package inject

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Port names by Istio's convention (a name is "<proto>" or "<proto>-<suffix>", compared
// lower-case), the same lists internal/snapshot applies to Service ports.
var (
	// httpPortNames declare an HTTP port: HTTP/1.1, h2c or gRPC.
	httpPortNames = map[string]bool{"http": true, "http2": true, "grpc": true, "grpc-web": true, "h2c": true}
	// tcpPortNames declare a port that is not HTTP; such a port never becomes the app port.
	tcpPortNames = map[string]bool{"tcp": true, "tls": true, "https": true, "mongo": true, "mysql": true, "redis": true}
)

// wellKnownTCPPorts are the ports of common servers that do not speak HTTP. An unnamed
// container port with one of these numbers is not taken as the app port: `redis:7` with
// `containerPort: 6379` is what users write, and its RESP would reach an HTTP listener.
var wellKnownTCPPorts = map[int32]bool{
	22: true, 25: true, 53: true, 389: true, 443: true, 465: true, 587: true, 636: true, 853: true,
	1433: true, 1521: true, 2181: true, 3306: true, 4222: true, 5432: true, 5672: true, 6379: true,
	9042: true, 9092: true, 11211: true, 26379: true, 27017: true,
}

// portNameProtocol is the protocol a port name declares: the part before the first "-".
func portNameProtocol(name string) string {
	name = strings.ToLower(name)
	if name == "grpc-web" {
		return name
	}
	p, _, _ := strings.Cut(name, "-")
	return p
}

// appPortOf is the port the sidecar's inbound HTTP listener forwards to, chosen as a user
// expects:
//
//  1. the weft.dev/app-port annotation;
//  2. else the first TCP container port (containers in order) whose name declares HTTP
//     ("http", "http-web", "grpc", "h2c", ...);
//  3. else the first TCP container port whose name declares no other protocol ("redis",
//     "tcp-db", "mysql", ...) and, unnamed, whose number is no well-known non-HTTP port
//     (6379, 5432, ...);
//  4. else 0: a pure client, or a pod that serves only TCP. Its sidecar has no inbound
//     HTTP listener; with iptables capture its inbound ports are still captured
//     (--inbound-capture) and reach the app through the TCP passthrough, with mutual TLS.
//
// Only the app port is served as HTTP; with iptables capture every other captured port
// reaches the app through the sidecar's inbound TCP passthrough, byte for byte.
func appPortOf(pod *corev1.Pod) (int32, error) {
	if v, ok := pod.Annotations[AnnotationAppPort]; ok {
		p, err := strconv.ParseInt(v, 10, 32)
		if err != nil || p < 1 || p > 65535 {
			return 0, fmt.Errorf("annotation %s=%q is not a port number (1-65535); fix or remove it", AnnotationAppPort, v)
		}
		return int32(p), nil
	}
	var ports []corev1.ContainerPort
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
				ports = append(ports, p)
			}
		}
	}
	for _, p := range ports {
		if httpPortNames[portNameProtocol(p.Name)] {
			return p.ContainerPort, nil
		}
	}
	for _, p := range ports {
		if p.Name == "" && wellKnownTCPPorts[p.ContainerPort] || tcpPortNames[portNameProtocol(p.Name)] {
			continue
		}
		return p.ContainerPort, nil
	}
	return 0, nil
}
