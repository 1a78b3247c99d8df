package hashkit

import "encoding/binary"

// crc16tab is the XMODEM (poly 0x1021) table twemproxy 0.5.0 ships.
var crc16tab = func() (t [256]uint16) {
	for i := range 256 {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

// CRC16 is XMODEM CRC-16 computed in a uint32 accumulator that is never
// masked, so the high bits keep the shifted-out state (twemproxy's quirk).
func CRC16(key []byte) uint32 {
	var crc uint32
	for _, b := range key {
		crc = crc<<8 ^ uint32(crc16tab[((crc>>8)^uint32(b))&0xff])
	}
	return crc
}

// Hsieh is Paul Hsieh's SuperFastHash; in the 3-byte tail the third byte is
// sign-extended (C char), everything else is read unsigned.
func Hsieh(key []byte) uint32 {
	n := len(key)
	if n == 0 {
		return 0
	}
	var h uint32
	rem := n & 3
	p := key
	for i := n >> 2; i > 0; i-- {
		h += uint32(binary.LittleEndian.Uint16(p))
		tmp := uint32(binary.LittleEndian.Uint16(p[2:]))<<11 ^ h
		h = h<<16 ^ tmp
		p = p[4:]
		h += h >> 11
	}
	switch rem {
	case 3:
		h += uint32(binary.LittleEndian.Uint16(p))
		h ^= h << 16
		h ^= sx(p[2]) << 18
		h += h >> 11
	case 2:
		h += uint32(binary.LittleEndian.Uint16(p))
		h ^= h << 11
		h += h >> 17
	case 1:
		h += uint32(p[0])
		h ^= h << 10
		h += h >> 1
	}
	h ^= h << 3
	h += h >> 5
	h ^= h << 4
	h += h >> 17
	h ^= h << 25
	h += h >> 6
	return h
}

// Murmur is MurmurHash2 (32-bit) with twemproxy's length-derived seed.
func Murmur(key []byte) uint32 {
	const m = 0x5bd1e995
	n := uint32(len(key))
	h := (0xdeadbeef * n) ^ n
	p := key
	for len(p) >= 4 {
		k := binary.LittleEndian.Uint32(p)
		k *= m
		k ^= k >> 24
		k *= m
		h *= m
		h ^= k
		p = p[4:]
	}
	switch len(p) {
	case 3:
		h ^= uint32(p[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(p[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(p[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}

func rot(x uint32, k uint) uint32 { return x<<k | x>>(32-k) }

// Jenkins is Bob Jenkins' lookup3 hashlittle with initval 13 (little-endian).
func Jenkins(key []byte) uint32 {
	n := len(key)
	a := 0xdeadbeef + uint32(n) + 13
	b, c := a, a
	k := key
	for len(k) > 12 {
		a += binary.LittleEndian.Uint32(k)
		b += binary.LittleEndian.Uint32(k[4:])
		c += binary.LittleEndian.Uint32(k[8:])
		a -= c
		a ^= rot(c, 4)
		c += b
		b -= a
		b ^= rot(a, 6)
		a += c
		c -= b
		c ^= rot(b, 8)
		b += a
		a -= c
		a ^= rot(c, 16)
		c += b
		b -= a
		b ^= rot(a, 19)
		a += c
		c -= b
		c ^= rot(b, 4)
		b += a
		k = k[12:]
	}
	if len(k) == 0 {
		return c
	}
	var tail [12]byte
	copy(tail[:], k)
	a += binary.LittleEndian.Uint32(tail[0:])
	b += binary.LittleEndian.Uint32(tail[4:])
	c += binary.LittleEndian.Uint32(tail[8:])
	c ^= b
	c -= rot(b, 14)
	a ^= c
	a -= rot(c, 11)
	b ^= a
	b -= rot(a, 25)
	c ^= b
	c -= rot(b, 16)
	a ^= c
	a -= rot(c, 4)
	b ^= a
	b -= rot(a, 14)
	c ^= b
	c -= rot(b, 24)
	return c
}
