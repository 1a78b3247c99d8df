// Package ring places keys on servers the way twemproxy 0.5.0 does: it takes
// the configured server list (ring names, weights, liveness), a distribution
// (ketama, modula, random), a hash function and a hash tag, and answers which
// server's config index owns a key.
//
// A Ring is immutable and safe for concurrent use; a config or liveness change
// builds a new one.
package ring

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/weftmesh/weft/sidecar/redisproxy/hashkit"
)

// Distribution names how hash values map to servers.
type Distribution string

// The distributions twemproxy offers.
const (
	Ketama Distribution = "ketama"
	Modula Distribution = "modula"
	Random Distribution = "random"
)

// Server is one configured server: its stable ring name (twemproxy's optional
// `name` column; with pods this must not be an IP) and its weight (>= 1).
type Server struct {
	Name   string
	Weight uint32
}

// Options selects how keys are placed.
type Options struct {
	Distribution Distribution
	Hash         string // twemproxy hash name; empty means fnv1a_64
	HashTag      string // two characters, or empty
}

// Ring answers key → server config index.
type Ring struct {
	dist   Distribution
	hash   hashkit.Func
	tagL   byte
	tagR   byte
	hasTag bool
	nconf  int
	points []point // ketama, sorted by value
	modula []int   // modula continuum: live servers repeated weight times
	live   []int   // random: live server indices
	rnd    func() uint32
}

type point struct {
	value uint32
	owner int
}

// pointsPerServer is ketama's 160 points per server at weight average.
const pointsPerServer = 160

// New builds a ring over servers; live[i] reports whether server i takes part
// (nil means all are live). rnd is used only by the random distribution.
func New(opts Options, servers []Server, live []bool, rnd func() uint32) (*Ring, error) {
	hname := opts.Hash
	if hname == "" {
		hname = hashkit.Default
	}
	h, err := hashkit.Lookup(hname)
	if err != nil {
		return nil, err
	}
	r := &Ring{dist: opts.Distribution, hash: h, nconf: len(servers), rnd: rnd}
	switch len(opts.HashTag) {
	case 0:
	case 2:
		r.tagL, r.tagR, r.hasTag = opts.HashTag[0], opts.HashTag[1], true
	default:
		return nil, fmt.Errorf("hash tag %q must be exactly two characters, e.g. \"{}\"", opts.HashTag)
	}
	for i, s := range servers {
		if s.Weight < 1 {
			return nil, fmt.Errorf("server %q has weight %d: weights must be at least 1", s.Name, s.Weight)
		}
		if s.Name == "" {
			return nil, fmt.Errorf("server %d has no ring name", i)
		}
	}
	isLive := func(i int) bool { return live == nil || live[i] }
	switch r.dist {
	case Ketama, "":
		r.dist = Ketama
		r.points = ketamaPoints(servers, isLive)
	case Modula:
		for i, s := range servers {
			if isLive(i) {
				for range s.Weight {
					r.modula = append(r.modula, i)
				}
			}
		}
	case Random:
		if rnd == nil {
			return nil, fmt.Errorf("random distribution needs a random source")
		}
		for i := range servers {
			if isLive(i) {
				r.live = append(r.live, i)
			}
		}
	default:
		return nil, fmt.Errorf("unknown distribution %q: use ketama, modula or random", opts.Distribution)
	}
	return r, nil
}

// PointsPerServer is twemproxy's float32 point count for a server of weight w
// in a live set of n servers with total weight total. Worked example: equal
// weights with n=25 give pct=0.04f, 0.04f*160=6.4f, /4=1.6f, *25=39.999996f,
// floor → 39, so 156 points rather than 160.
func PointsPerServer(w, total uint32, n int) uint32 {
	pct := float32(w) / float32(total)
	x := float32(pct * pointsPerServer)
	x = float32(x / 4)
	x = float32(x * float32(n))
	return 4 * uint32(math.Floor(float64(float32(float64(x)+1e-10))))
}

func ketamaPoints(servers []Server, isLive func(int) bool) []point {
	var n int
	var total uint32
	for i, s := range servers {
		if isLive(i) {
			n++
			total += s.Weight
		}
	}
	var pts []point
	buf := make([]byte, 0, 300)
	for i, s := range servers {
		if !isLive(i) {
			continue
		}
		pps := PointsPerServer(s.Weight, total, n)
		for j := range pps / 4 {
			buf = append(buf[:0], s.Name...)
			buf = append(buf, '-')
			buf = strconv.AppendUint(buf, uint64(j), 10)
			if len(buf) > 272 { // snprintf into a 273-byte buffer
				buf = buf[:272]
			}
			for a := range 4 {
				pts = append(pts, point{value: hashkit.KetamaPoint(buf, a), owner: i})
			}
		}
	}
	slices.SortStableFunc(pts, func(a, b point) int {
		switch {
		case a.value < b.value:
			return -1
		case a.value > b.value:
			return 1
		}
		return 0
	})
	return pts
}

// HashKey returns the hash of the part of key that placement uses: the text
// inside the hash tag when present and non-empty, else the whole key; an
// empty key hashes to 0.
func (r *Ring) HashKey(key []byte) uint32 {
	k := r.tagged(key)
	if len(k) == 0 {
		return 0
	}
	return r.hash(k)
}

func (r *Ring) tagged(key []byte) []byte {
	if !r.hasTag {
		return key
	}
	i := bytes.IndexByte(key, r.tagL)
	if i < 0 {
		return key
	}
	j := bytes.IndexByte(key[i+1:], r.tagR)
	if j <= 0 {
		return key
	}
	return key[i+1 : i+1+j]
}

// Pick returns the config index of the server that owns key, or -1 when no
// server is live.
func (r *Ring) Pick(key []byte) int {
	if r.nconf == 1 {
		return 0 // twemproxy skips hashing for a single-server pool
	}
	switch r.dist {
	case Modula:
		if len(r.modula) == 0 {
			return -1
		}
		return r.modula[r.HashKey(key)%uint32(len(r.modula))]
	case Random:
		if len(r.live) == 0 {
			return -1
		}
		return r.live[r.rnd()%uint32(len(r.live))]
	}
	if len(r.points) == 0 {
		return -1
	}
	h := r.HashKey(key)
	lo, hi := 0, len(r.points)
	for lo < hi { // first point with value >= h
		m := int(uint(lo+hi) >> 1)
		if r.points[m].value < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(r.points) {
		lo = 0
	}
	return r.points[lo].owner
}

// Points reports how many ketama points each configured server holds (for
// stats and tests).
func (r *Ring) Points() []int {
	out := make([]int, r.nconf)
	for _, p := range r.points {
		out[p.owner]++
	}
	return out
}
