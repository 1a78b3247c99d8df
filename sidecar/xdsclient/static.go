package xdsclient

import (
	"fmt"
	"os"

	// The control plane's default retry policy carries a typed previous_hosts predicate;
	// JSON can name a type only if it is linked in.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/sidecar/config"
)

// LoadStatic reads Envoy resources from a JSON file shaped like a DiscoveryResponse —
// {"resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", ...}, ...]}
// — of mixed types, validates them as an xDS response would be, and builds the config.
// It lets the sidecar run without a control plane (benchmarks, debugging).
func LoadStatic(path string) (*config.Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading static config: %w", err)
	}
	var dr discoveryv3.DiscoveryResponse
	if err := protojson.Unmarshal(b, &dr); err != nil {
		return nil, fmt.Errorf("parsing static config %s: %w", path, err)
	}
	res := config.Resources{}
	versions := map[string]string{}
	for _, a := range dr.GetResources() {
		m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
		if err != nil {
			return nil, fmt.Errorf("static config %s: decoding %s: %w", path, a.GetTypeUrl(), err)
		}
		if err := config.Validate(a.GetTypeUrl(), m); err != nil {
			return nil, fmt.Errorf("static config %s: %w", path, err)
		}
		if res[a.GetTypeUrl()] == nil {
			res[a.GetTypeUrl()] = map[string]proto.Message{}
		}
		res[a.GetTypeUrl()][resourceName(m)] = m
		versions[a.GetTypeUrl()] = "static"
	}
	cfg, err := config.Build(res, versions)
	if err != nil {
		return nil, fmt.Errorf("static config %s: %w", path, err)
	}
	for _, rl := range cfg.RedisListeners {
		if rl.Err != nil {
			return nil, fmt.Errorf("static config %s: %w", path, rl.Err)
		}
	}
	return cfg, nil
}
