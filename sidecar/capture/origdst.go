package capture

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (IPv4, level SOL_IP) and IP6T_SO_ORIGINAL_DST (IPv6,
// level SOL_IPV6): both 80 (linux/netfilter_ipv4.h, netfilter_ipv6/ip6_tables.h; Envoy's
// platform.h).
const soOriginalDst = 80

// OriginalDst reads the destination a connection had before an iptables REDIRECT (or
// nftables redirect) rewrote it, from conntrack. ok is false when the connection was not
// redirected (no NAT entry: ENOENT) or the socket is neither IPv4 nor IPv6.
func OriginalDst(fd int) (dst netip.AddrPort, ok bool) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, false
	}
	var buf [28]byte // sockaddr_in6, the larger of the two
	size := uint32(len(buf))
	level := unix.SOL_IP
	// A dual-stack listener ([::]) holds IPv4 connections as v4-mapped IPv6 sockets; their
	// NAT entry is in the IPv4 conntrack table, which only SOL_IP reaches (as Envoy does).
	if a, v6 := sa.(*unix.SockaddrInet6); v6 && !netip.AddrFrom16(a.Addr).Is4In6() {
		level = unix.SOL_IPV6
	}
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), soOriginalDst,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
	if e != 0 {
		return netip.AddrPort{}, false
	}
	port := binary.BigEndian.Uint16(buf[2:4])
	switch binary.NativeEndian.Uint16(buf[0:2]) {
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[4:8])), port), true
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(buf[8:24])).Unmap(), port), true
	}
	return netip.AddrPort{}, false
}

// localAddr is the socket's own address.
func localAddr(fd int) netip.AddrPort {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}
