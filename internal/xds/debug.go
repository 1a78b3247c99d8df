package xds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/go-logr/logr"
	"golang.org/x/net/netutil"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/snapshot"
)

// DebugPort is the manager's debug HTTP port (istiod's monitoring port number). The manager
// binds it on 127.0.0.1 only: it is reached through `kubectl port-forward` (which needs the
// pods/portforward permission in the manager's namespace) or, in the local mesh where the
// manager is a host process, directly on the host's loopback.
const DebugPort = 15014

// Sync states of one type of one sidecar, istioctl proxy-status's words.
const (
	// SyncSynced: the sidecar ACKed the version its view's snapshot has.
	SyncSynced = "SYNCED"
	// SyncStale: the snapshot has a version the sidecar has not ACKed (yet).
	SyncStale = "STALE"
	// SyncRejected: the sidecar NACKed the snapshot's current version.
	SyncRejected = "REJECTED"
	// SyncNotSent: the view has no resources of the type, so nothing is sent.
	SyncNotSent = "NOT SENT"
)

// TypeShort names a type URL as istioctl does (CDS, EDS, LDS, RDS, SDS); other URLs are returned
// unchanged.
func TypeShort(typeURL string) string {
	switch typeURL {
	case resourcev3.ClusterType:
		return "CDS"
	case resourcev3.EndpointType:
		return "EDS"
	case resourcev3.ListenerType:
		return "LDS"
	case resourcev3.RouteType:
		return "RDS"
	case resourcev3.SecretType:
		return "SDS"
	}
	return typeURL
}

// SyncZ is the /debug/syncz document: every sidecar connected to this manager replica.
type SyncZ struct {
	Nodes []NodeSync `json:"nodes"`
}

// NodeSync is one connected sidecar (node ID <pod>.<namespace>) and how it took each type.
type NodeSync struct {
	ID        string `json:"id"`
	Pod       string `json:"pod"`
	Namespace string `json:"namespace"`
	// Function is <ns>/<name> of the MeshFunction the pod serves, if any.
	Function string `json:"function,omitempty"`
	// RedisProxy is <ns>/<name> when the sidecar is that RedisProxy's standalone proxy.
	RedisProxy string `json:"redisProxy,omitempty"`
	// RedisPools are the RedisProxies (<ns>/<name>) whose pool this sidecar's view includes.
	RedisPools []string `json:"redisPools,omitempty"`
	// Types are keyed by short type name (CDS, EDS, LDS, RDS).
	Types map[string]TypeSync `json:"types"`
}

// TypeSync is one type of one sidecar.
type TypeSync struct {
	Status string `json:"status"`
	// Current is the version of the sidecar's view's snapshot; Acked what it last ACKed.
	Current string `json:"current,omitempty"`
	Acked   string `json:"acked,omitempty"`
	// RejectedVersion and Error are its last NACK, kept until a later ACK of the type.
	RejectedVersion string `json:"rejectedVersion,omitempty"`
	Error           string `json:"error,omitempty"`
}

// ConfigDump is the /debug/config_dump?proxyID=<node> document: the snapshot the manager
// serves to that sidecar's view, with inline secrets redacted.
type ConfigDump struct {
	Node NodeSync `json:"node"`
	// Resources are keyed by short type name, then resource name; each is the resource in
	// protojson with Envoy's field names.
	Resources map[string]map[string]json.RawMessage `json:"resources"`
}

// DebugHandler serves the read-only debug views: /debug/syncz and /debug/config_dump. It
// has no authentication of its own; serve it on loopback only (ServeDebug does).
func (s *Server) DebugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/syncz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.syncz())
	})
	mux.HandleFunc("GET /debug/config_dump", s.configDump)
	return mux
}

func (s *Server) syncz() SyncZ {
	res := s.cache.Result()
	nodes := s.tracker.Nodes()
	out := SyncZ{Nodes: make([]NodeSync, 0, len(nodes))}
	for _, n := range nodes {
		out.Nodes = append(out.Nodes, s.nodeSync(n, res))
	}
	return out
}

func (s *Server) nodeSync(n NodeState, res *snapshot.Result) NodeSync {
	pod, _, _ := strings.Cut(n.ID, ".")
	ns := NodeSync{ID: n.ID, Pod: pod, Namespace: n.View.Namespace, Function: n.View.Function,
		RedisProxy: n.View.RedisProxy, Types: map[string]TypeSync{}}
	if res != nil {
		for _, p := range res.Redis {
			if res.Includes(n.View, p.Key) {
				ns.RedisPools = append(ns.RedisPools, p.Key.Namespace+"/"+p.Key.Name)
			}
		}
	}
	want := s.cache.Versions(n.View)
	for _, t := range Types {
		ts := TypeSync{Current: want[t], Acked: n.Acked[t]}
		r, rejected := n.Rejected[t]
		if rejected {
			ts.RejectedVersion, ts.Error = r.Version, r.Error
		}
		switch {
		case rejected && ts.Current != "" && r.Version == ts.Current:
			ts.Status = SyncRejected
		case ts.Current == "" && ts.Acked == "":
			ts.Status = SyncNotSent
		case ts.Current == ts.Acked:
			ts.Status = SyncSynced
		default:
			ts.Status = SyncStale
		}
		ns.Types[TypeShort(t)] = ts
	}
	return ns
}

// configDump answers /debug/config_dump?proxyID=<pod>.<namespace>.
func (s *Server) configDump(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("proxyID")
	if id == "" {
		writeError(w, http.StatusBadRequest, "proxyID is required: /debug/config_dump?proxyID=<pod>.<namespace>")
		return
	}
	var node *NodeState
	for _, n := range s.tracker.Nodes() {
		if n.ID == id {
			node = &n
			break
		}
	}
	if node == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no sidecar %q is connected to this manager: is the pod running with its weft-sidecar container?", id))
		return
	}
	dump := ConfigDump{Node: s.nodeSync(*node, s.cache.Result()), Resources: map[string]map[string]json.RawMessage{}}
	snap, err := s.cache.cache.GetSnapshot(node.View.Key())
	if err != nil {
		// The sidecar connected before the first translation: nothing was sent yet.
		writeJSON(w, http.StatusOK, dump)
		return
	}
	mo := protojson.MarshalOptions{UseProtoNames: true}
	for _, t := range Types {
		out := map[string]json.RawMessage{}
		for name, res := range snap.GetResources(t) {
			out[name] = marshalRedacted(mo, res)
		}
		dump.Resources[TypeShort(t)] = out
	}
	writeJSON(w, http.StatusOK, dump)
}

func marshalRedacted(mo protojson.MarshalOptions, res types.Resource) json.RawMessage {
	b, err := mo.Marshal(res)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"error": err.Error()})
		return b
	}
	return RedactJSON(b)
}

// Redacted replaces every secret value in a config dump.
const Redacted = "[redacted]"

// RedactJSON returns doc with the string values under secret-looking keys replaced by
// Redacted: any key containing "password", "secret", "private_key" or "credential", and
// "token" or a key ending in "_token". That covers Weft's inline secrets (a RedisProxy's
// auth_password and downstream_auth_password(s), the async queue's token in cluster
// metadata) and Envoy's TLS and SDS fields, whatever resource they sit in. Numbers and
// booleans are left alone. Input that is not JSON is replaced whole: never leak what could
// not be checked.
func RedactJSON(doc []byte) []byte {
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		b, _ := json.Marshal(map[string]string{"error": "unreadable resource, " + Redacted})
		return b
	}
	out, err := json.Marshal(redactValue(v, false))
	if err != nil {
		b, _ := json.Marshal(map[string]string{"error": err.Error()})
		return b
	}
	return out
}

func redactValue(v any, secret bool) any {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			x[k] = redactValue(val, secret || SecretKey(k))
		}
		return x
	case []any:
		for i, val := range x {
			x[i] = redactValue(val, secret)
		}
		return x
	case string:
		if secret {
			return Redacted
		}
	}
	return v
}

// SecretKey reports whether a JSON key names a secret (see RedactJSON). The SDS reference
// key (contract.SecretRefMetadataKey) holds a secret's name, not its value, and is shown.
func SecretKey(k string) bool {
	if k == contract.SecretRefMetadataKey {
		return false
	}
	k = strings.ToLower(k)
	for _, s := range []string{"password", "secret", "private_key", "privatekey", "credential"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return strings.HasSuffix(k, "token")
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// Debug server bounds: a request head is at most 16 KiB and must arrive within 5 s; a
// response must be written within 30 s; at most 16 connections are served at once (the
// debug views are for a person with a CLI, not a fleet of scrapers).
const (
	debugMaxHeaderBytes = 16 << 10
	debugReadTimeout    = 5 * time.Second
	debugWriteTimeout   = 30 * time.Second
	debugMaxConns       = 16
)

// DebugServer serves a Server's DebugHandler on an address; it is a manager Runnable that
// runs on every replica (each has its own sidecars).
type DebugServer struct {
	Server  *Server
	Address string
	Log     logr.Logger
	// Listener, when set, is used instead of listening on Address (tests).
	Listener net.Listener
}

// NeedLeaderElection is false: every replica serves its own sidecars' state.
func (d *DebugServer) NeedLeaderElection() bool { return false }

// Start serves until ctx ends. A failure to listen is logged, not returned: the debug views
// are not worth stopping the control plane for.
func (d *DebugServer) Start(ctx context.Context) error {
	ln := d.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", d.Address); err != nil {
			d.Log.Error(err, "not serving the debug endpoints (weft proxy-status needs them)", "address", d.Address)
			return nil
		}
	}
	ln = netutil.LimitListener(ln, debugMaxConns)
	hs := &http.Server{Handler: d.Server.DebugHandler(), ReadHeaderTimeout: debugReadTimeout, ReadTimeout: debugReadTimeout,
		WriteTimeout: debugWriteTimeout, MaxHeaderBytes: debugMaxHeaderBytes}
	d.Log.Info("serving debug endpoints", "address", ln.Addr().String())
	done := make(chan error, 1)
	go func() { done <- hs.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("debug server stopped: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
