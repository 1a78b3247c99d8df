package httpproxy

import "net/netip"

// sourceIP is the address a useSourceIP hash policy (Envoy's connection_properties
// source_ip) hashes for a request whose connection came from remote (host:port).
//
// Envoy hashes the downstream connection's source IP as a string. In a sidecar that is
// the caller's address only when the caller's traffic arrives from the network side: on
// the inbound listener (the calling pod's IP) and for outbound traffic captured by
// iptables (the app's socket keeps the pod IP as its source). An app that reaches the
// sidecar with HTTP_PROXY connects to 127.0.0.1, so every caller would hash the same
// loopback address and land on one endpoint. For a loopback peer the sidecar therefore
// hashes podIP, its own pod's IP (POD_IP from the downward API): the caller is the app in
// this pod, and the key is then the same one capture would give. Without a pod IP (a
// sidecar started by hand) the loopback address is hashed, as before.
//
// The result is the IP's canonical text (IPv4-mapped IPv6 unmapped), so both HTTP paths,
// which spell remote addresses differently, hash the same key.
func sourceIP(remote string, podIP netip.Addr) string {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return remote // not host:port (a test's fake address): hash it whole
	}
	ip := ap.Addr().Unmap()
	if ip.IsLoopback() && podIP.IsValid() {
		ip = podIP
	}
	return ip.String()
}
