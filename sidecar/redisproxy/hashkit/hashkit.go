// Package hashkit holds twemproxy's twelve key hash functions, bit for bit as
// nutcracker 0.5.0 computes them on x86-64 (where C char is signed).
//
// The sidecar places keys exactly where twemproxy would so that a pool can move
// from twemproxy to Weft without re-homing a single key. The quirks are kept on
// purpose: fnv1a_64 is 32-bit arithmetic with truncated 64-bit constants,
// several functions sign-extend bytes >= 0x80, crc16 never masks its
// accumulator and crc32 returns only 15 bits.
package hashkit

import (
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sort"
)

// Func hashes a key to the 32-bit value twemproxy feeds to its distribution.
type Func func(key []byte) uint32

var funcs = map[string]Func{
	"one_at_a_time": OneAtATime,
	"md5":           MD5,
	"crc16":         CRC16,
	"crc32":         CRC32,
	"crc32a":        CRC32a,
	"fnv1_64":       FNV1_64,
	"fnv1a_64":      FNV1a_64,
	"fnv1_32":       FNV1_32,
	"fnv1a_32":      FNV1a_32,
	"hsieh":         Hsieh,
	"murmur":        Murmur,
	"jenkins":       Jenkins,
}

// Default is twemproxy's default hash (`hash:` left out of the pool config).
const Default = "fnv1a_64"

// Lookup returns the hash function twemproxy calls name.
func Lookup(name string) (Func, error) {
	if f, ok := funcs[name]; ok {
		return f, nil
	}
	return nil, fmt.Errorf("unknown hash %q: use one of %v", name, Names())
}

// Names lists the supported hash names, sorted.
func Names() []string {
	out := make([]string, 0, len(funcs))
	for n := range funcs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// sx sign-extends a byte the way x86 C does for `(uint32_t)(char)b`.
func sx(b byte) uint32 { return uint32(int32(int8(b))) }

// OneAtATime is Jenkins' one-at-a-time hash over sign-extended bytes.
func OneAtATime(key []byte) uint32 {
	var v uint32
	for _, b := range key {
		v += sx(b)
		v += v << 10
		v ^= v >> 6
	}
	v += v << 3
	v ^= v >> 11
	v += v << 15
	return v
}

// MD5 is the little-endian uint32 of the first four MD5 digest bytes.
func MD5(key []byte) uint32 {
	d := md5.Sum(key)
	return binary.LittleEndian.Uint32(d[:4])
}

// KetamaPoint is the a-th (0..3) point value ketama derives from MD5(key).
func KetamaPoint(key []byte, a int) uint32 {
	d := md5.Sum(key)
	return binary.LittleEndian.Uint32(d[4*a : 4*a+4])
}

// FNV1_64 is real 64-bit FNV-1 (bytes sign-extended) truncated to its low 32 bits.
func FNV1_64(key []byte) uint32 {
	h := uint64(0xcbf29ce484222325)
	for _, b := range key {
		h *= 0x100000001b3
		h ^= uint64(int64(int8(b)))
	}
	return uint32(h)
}

// FNV1a_64 is twemproxy's default: 32-bit FNV-1a with the 64-bit constants
// truncated (offset 0x84222325, prime 0x1b3). Its weak prime is why keys that
// differ only in their last characters cluster on one server.
func FNV1a_64(key []byte) uint32 {
	h := uint32(0x84222325)
	for _, b := range key {
		h ^= sx(b)
		h *= 0x1b3
	}
	return h
}

// FNV1_32 is standard 32-bit FNV-1 over sign-extended bytes.
func FNV1_32(key []byte) uint32 {
	h := uint32(2166136261)
	for _, b := range key {
		h *= 16777619
		h ^= sx(b)
	}
	return h
}

// FNV1a_32 is standard 32-bit FNV-1a over sign-extended bytes.
func FNV1a_32(key []byte) uint32 {
	h := uint32(2166136261)
	for _, b := range key {
		h ^= sx(b)
		h *= 16777619
	}
	return h
}

// CRC32a is the standard CRC-32/IEEE (zlib).
func CRC32a(key []byte) uint32 { return crc32.ChecksumIEEE(key) }

// CRC32 is libmemcached's variant: bits 16..30 of the standard CRC-32 (C:
// ((~register)>>16)&0x7fff). With ketama every key lands in the first 2^15 of
// the ring, i.e. on one server.
func CRC32(key []byte) uint32 {
	return (crc32.ChecksumIEEE(key) >> 16) & 0x7fff
}
