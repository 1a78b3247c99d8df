package telemetry

import (
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultMaxSeries bounds the label sets of each metric family (HTTP, TCP). Past it, new
// label sets are counted in one series whose workload and service labels say "overflow",
// and weft_telemetry_series_overflow_total counts how often that happened.
const DefaultMaxSeries = 10_000

const (
	maxPeers    = 1024 // distinct PeerHeader values interned; the rest are an unknown peer
	maxServices = 1024 // distinct destination services interned; the rest are unknown
	overflow    = "overflow"
)

// durationBuckets are Envoy's default histogram buckets (stats.proto,
// HistogramBucketSettings), which Istio's sidecars use for istio_request_duration_milliseconds
// and, in milliseconds' place, bytes for istio_request_bytes and istio_response_bytes.
var durationBuckets = [...]float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

const nBuckets = len(durationBuckets)

// side is one workload's label values, interned: series keys compare pointers.
type side struct {
	workload, namespace, principal, app, version, canonicalService, canonicalRevision, cluster string
}

func sideOf(w Workload) *side {
	return &side{workload: orUnknown(w.Name), namespace: orUnknown(w.Namespace), principal: orUnknown(w.Principal),
		app: orUnknown(w.App), version: orUnknown(w.Version), canonicalService: orUnknown(w.CanonicalService),
		canonicalRevision: orUnknown(w.CanonicalRevision), cluster: orUnknown(w.Cluster)}
}

var unknownSide = &side{Unknown, Unknown, Unknown, Unknown, Unknown, Unknown, Unknown, Unknown}
var overflowSide = &side{overflow, overflow, overflow, overflow, overflow, overflow, overflow, overflow}

// service is a destination service's labels and what the caller knows of its workload.
type service struct {
	host, name, namespace string
	dst                   *side
}

var unknownService = &service{Unknown, Unknown, Unknown, unknownSide}
var overflowService = &service{overflow, overflow, overflow, overflowSide}

// serviceOfCluster reads the destination from a cluster name (contract/names.go):
// outbound|<port>|<subset>|<svc>.<ns>.svc.cluster.local|<route> and function|<ns>/<name>.
// The workload behind a service is not known to the caller (Istio learns it from the
// response's peer metadata; Weft does not exchange it yet): Unknown, in the service's
// namespace, with the subset as its version.
func serviceOfCluster(cluster string) *service {
	s := &service{host: cluster, name: cluster, namespace: Unknown}
	d := *unknownSide
	if rest, ok := strings.CutPrefix(cluster, "outbound|"); ok {
		parts := strings.Split(rest, "|")
		if len(parts) >= 3 {
			s.host = parts[2]
			if name, after, ok := strings.Cut(parts[2], "."); ok {
				s.name = name
				s.namespace, _, _ = strings.Cut(after, ".")
			} else {
				s.name = parts[2]
			}
			if parts[1] != "" {
				d.version = parts[1]
			}
		}
	} else if rest, ok := strings.CutPrefix(cluster, "function|"); ok {
		if ns, name, ok := strings.Cut(rest, "/"); ok {
			s.name, s.namespace, s.host = name, ns, name+"."+ns+".svc.cluster.local"
		}
	}
	s.host, s.name, s.namespace = labelValue(s.host), labelValue(s.name), labelValue(s.namespace)
	d.namespace = s.namespace
	s.dst = &d
	return s
}

// hist is one histogram: counts per bucket (not cumulative; the last is +Inf) and the sum.
type hist struct {
	counts [nBuckets + 1]atomic.Uint64
	sum    atomic.Uint64 // microseconds for durations, bytes for sizes
}

func (h *hist) observe(v float64, sum uint64) {
	i := 0
	for i < nBuckets && v > durationBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(sum)
}

type httpKey struct {
	inbound          bool
	src, dst         *side
	svc              *service
	grpc             bool
	code, grpcStatus int32
	flags            string
}

type httpSeries struct {
	labels         string // the series' labels, rendered once
	requests       atomic.Uint64
	duration       hist
	reqBytes, resp hist
}

type tcpKey struct {
	inbound  bool
	src, dst *side
	svc      *service
}

// TCPSeries counts one label set's TCP connections and bytes.
type TCPSeries struct {
	labels         string
	opened, closed atomic.Uint64
	sent, received atomic.Uint64
}

// Opened counts a connection that opened.
func (s *TCPSeries) Opened() { s.opened.Add(1) }

// Closed counts a connection that closed after sending sent bytes to its caller and
// receiving received bytes from it.
func (s *TCPSeries) Closed(sent, received uint64) {
	s.sent.Add(sent)
	s.received.Add(received)
	s.closed.Add(1)
}

// HTTPRecord is one HTTP exchange as the proxy saw it. The proxy fills it on the stack;
// Record keeps nothing of it.
type HTTPRecord struct {
	// Inbound: the inbound listener served it (reporter="destination"); else the outbound
	// listener did (reporter="source").
	Inbound bool
	// Peer is the PeerHeader value the request came with (inbound).
	Peer string
	// DestinationPeer is the PeerHeader value the response came with (outbound): the
	// called sidecar's workload.
	DestinationPeer string
	// dstPeer is the destination's workload when it came as bytes (SetDestinationPeer).
	dstPeer *side
	// Cluster is the upstream cluster the request went to ("" if it was answered locally
	// before one was picked).
	Cluster string
	// Authority is the request's Host; on the inbound side of a pod that serves no
	// function it names the destination service.
	Authority string
	GRPC      bool
	Status    int
	// GRPCStatus is the grpc-status the call ended with; -1: none.
	GRPCStatus int
	// Flags are Envoy's response flags ("" for none: "-").
	Flags               string
	ReqBytes, RespBytes int64
	Duration            time.Duration

	// Span is this hop's span (Propagate); exported when Span.Sampled.
	Span Span
	// HoldStart and HoldEnd bound a cold-start hold (zero: none), a child span.
	HoldStart, HoldEnd time.Time

	// For the access log only.
	Start                                  time.Time
	Method, Path, Protocol, UpstreamHost   string
	RequestID, UserAgent, DownstreamRemote string
}

// Mesh holds the sidecar's Istio metrics, access log and trace settings.
type Mesh struct {
	self       *side
	inboundSvc *service // the pod's own function's service; nil: by Authority
	peerValue  []string // PeerHeader's value as a header map entry, shared read-only
	maxSeries  int
	log        *AccessLog
	trace      TraceOptions

	peers    table[string, *side]
	services table[string, *service] // by cluster
	inHosts  table[string, *service] // inbound destination services, by host
	http     table[httpKey, *httpSeries]
	tcp      table[tcpKey, *TCPSeries]
	overflow atomic.Uint64
}

// Options configure a Mesh.
type Options struct {
	Self Workload
	// Function is the MeshFunction (namespace/name) the pod serves: the destination
	// service of its inbound requests. Empty: the request's Host names it.
	Function string
	// MaxSeries bounds each family's label sets (DefaultMaxSeries when zero).
	MaxSeries int
	// AccessLog, when set, receives a JSON line per exchange that passes its filter.
	AccessLog *AccessLog
	Trace     TraceOptions
}

// New returns a Mesh for the pod o.Self describes.
func New(o Options) *Mesh {
	if o.MaxSeries <= 0 {
		o.MaxSeries = DefaultMaxSeries
	}
	m := &Mesh{self: sideOf(o.Self), maxSeries: o.MaxSeries, log: o.AccessLog, trace: o.Trace,
		peerValue: []string{encodePeer(o.Self)}}
	if ns, name, ok := strings.Cut(o.Function, "/"); ok {
		m.inboundSvc = &service{host: name + "." + ns + ".svc.cluster.local", name: name, namespace: ns, dst: m.self}
	}
	return m
}

// SetDestinationPeer sets r's destination workload from a PeerHeader value read from a
// response head in place; a value seen before costs no allocation.
func (m *Mesh) SetDestinationPeer(r *HTTPRecord, v []byte) {
	if m == nil || len(v) == 0 {
		return
	}
	if s, ok := m.peers.get(string(v)); ok { // no allocation: a map lookup by converted bytes
		r.dstPeer = s
		return
	}
	if p := m.peer(string(v)); p != unknownSide {
		r.dstPeer = p
	}
}

// PeerValue is the PeerHeader value the outbound side sets, as a header map entry: one
// shared slice, never to be written.
func (m *Mesh) PeerValue() []string { return m.peerValue }

func (m *Mesh) peer(v string) *side {
	if v == "" {
		return unknownSide
	}
	if s, ok := m.peers.get(v); ok {
		return s
	}
	w, ok := decodePeer(v)
	if !ok {
		return unknownSide
	}
	s, full := m.peers.getOrAdd(v, maxPeers, func() *side { return sideOf(w) })
	if full {
		return unknownSide
	}
	return s
}

// service interns the service table holds under key (a cluster name, or an inbound
// request's host), made by make on a miss; past maxServices it is unknownService.
func (m *Mesh) service(t *table[string, *service], key string, newV func() *service) *service {
	s, full := t.getOrAdd(key, maxServices, newV)
	if full {
		return unknownService
	}
	return s
}

// inboundService is the destination service of an inbound request with Host authority.
func (m *Mesh) inboundService(authority string) *service {
	if m.inboundSvc != nil {
		return m.inboundSvc
	}
	host := authority
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
		host = host[:i]
	}
	return m.service(&m.inHosts, host, func() *service {
		if host == "" {
			return &service{Unknown, Unknown, Unknown, m.self}
		}
		name, ns := host, m.self.namespace
		if n, rest, ok := strings.Cut(host, "."); ok {
			name = n
			if x, _, ok := strings.Cut(rest, "."); ok && x != "svc" {
				ns = x
			}
		}
		return &service{host: labelValue(host), name: labelValue(name), namespace: labelValue(ns), dst: m.self}
	})
}

// Record counts one HTTP exchange and logs it when the access log takes it.
func (m *Mesh) Record(r *HTTPRecord) {
	if m == nil {
		return
	}
	k := httpKey{inbound: r.Inbound, grpc: r.GRPC, code: int32(r.Status), grpcStatus: int32(r.GRPCStatus), flags: r.Flags}
	if r.Inbound {
		k.src, k.dst, k.svc = m.peer(r.Peer), m.self, m.inboundService(r.Authority)
	} else {
		k.src = m.self
		k.svc = unknownService
		if r.Cluster != "" {
			cl := r.Cluster
			k.svc = m.service(&m.services, cl, func() *service { return serviceOfCluster(cl) })
		}
		k.dst = k.svc.dst
		if r.dstPeer != nil {
			k.dst = r.dstPeer
		} else if r.DestinationPeer != "" {
			if p := m.peer(r.DestinationPeer); p != unknownSide {
				k.dst = p
			}
		}
	}
	s := m.httpSeries(k)
	s.requests.Add(1)
	s.duration.observe(float64(r.Duration)/1e6, uint64(r.Duration/time.Microsecond))
	s.reqBytes.observe(float64(r.ReqBytes), uint64(max(r.ReqBytes, 0)))
	s.resp.observe(float64(r.RespBytes), uint64(max(r.RespBytes, 0)))
	if m.log != nil {
		m.log.Log(r, k.src)
	}
	m.exportSpans(r)
}

func (m *Mesh) httpSeries(k httpKey) *httpSeries {
	s, full := m.http.getOrAdd(k, m.maxSeries, func() *httpSeries { return &httpSeries{labels: httpLabels(k)} })
	if !full {
		return s
	}
	m.overflow.Add(1)
	k = httpKey{inbound: k.inbound, src: overflowSide, dst: overflowSide, svc: overflowService}
	s, _ = m.http.getOrAdd(k, m.maxSeries+2, func() *httpSeries { return &httpSeries{labels: httpLabels(k)} })
	return s
}

// TCP returns the series a proxied TCP connection to cluster counts in. Inbound
// connections carry no peer metadata: their source is Unknown.
func (m *Mesh) TCP(inbound bool, cluster string) *TCPSeries {
	k := tcpKey{inbound: inbound}
	svc := m.service(&m.services, cluster, func() *service { return serviceOfCluster(cluster) })
	if inbound {
		k.src, k.dst, k.svc = unknownSide, m.self, svc
		if m.inboundSvc != nil {
			k.svc = m.inboundSvc
		}
	} else {
		k.src, k.dst, k.svc = m.self, svc.dst, svc
	}
	mk := func() *TCPSeries { return &TCPSeries{labels: commonLabels(k.inbound, k.src, k.dst, k.svc, "tcp")} }
	s, full := m.tcp.getOrAdd(k, m.maxSeries, mk)
	if !full {
		return s
	}
	m.overflow.Add(1)
	k = tcpKey{inbound: inbound, src: overflowSide, dst: overflowSide, svc: overflowService}
	s, _ = m.tcp.getOrAdd(k, m.maxSeries+2, mk)
	return s
}

// commonLabels renders the labels every Istio metric has, in Istio's order.
func commonLabels(inbound bool, src, dst *side, svc *service, protocol string) string {
	var b strings.Builder
	reporter, security := "source", "unknown"
	if inbound {
		reporter, security = "destination", "none"
	}
	add := func(k, v string) {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteString(`="`)
		writeEscaped(&b, v)
		b.WriteByte('"')
	}
	add("reporter", reporter)
	add("source_workload", src.workload)
	add("source_canonical_service", src.canonicalService)
	add("source_canonical_revision", src.canonicalRevision)
	add("source_workload_namespace", src.namespace)
	add("source_principal", src.principal)
	add("source_app", src.app)
	add("source_version", src.version)
	add("source_cluster", src.cluster)
	add("destination_workload", dst.workload)
	add("destination_workload_namespace", dst.namespace)
	add("destination_principal", dst.principal)
	add("destination_app", dst.app)
	add("destination_version", dst.version)
	add("destination_service", svc.host)
	add("destination_canonical_service", dst.canonicalService)
	add("destination_canonical_revision", dst.canonicalRevision)
	add("destination_service_name", svc.name)
	add("destination_service_namespace", svc.namespace)
	add("destination_cluster", dst.cluster)
	add("request_protocol", protocol)
	add("connection_security_policy", security)
	return b.String()
}

func httpLabels(k httpKey) string {
	proto := "http"
	if k.grpc {
		proto = "grpc"
	}
	var b strings.Builder
	b.WriteString(commonLabels(k.inbound, k.src, k.dst, k.svc, proto))
	b.WriteString(`,response_code="`)
	b.WriteString(strconv.Itoa(int(k.code)))
	b.WriteString(`",grpc_response_status="`)
	if k.grpcStatus >= 0 {
		b.WriteString(strconv.Itoa(int(k.grpcStatus)))
	}
	b.WriteString(`",response_flags="`)
	if k.flags == "" {
		b.WriteString("-")
	} else {
		writeEscaped(&b, k.flags)
	}
	b.WriteByte('"')
	return b.String()
}

// writeEscaped writes a label value with the exposition format's escapes.
func writeEscaped(b *strings.Builder, v string) {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '"':
			b.WriteString(`\"`)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteByte(c)
		}
	}
}

// Logging reports whether the access log is on.
func (m *Mesh) Logging() bool { return m != nil && m.log != nil }
