package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/weftmesh/weft/internal/xds"
)

func TestProxyStatusGolden(t *testing.T) {
	w := needWorld(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"proxy-status", []string{"proxy-status"}},
		{"proxy-status-wide", []string{"proxy-status", "-o", "wide"}},
		{"proxy-status-pod-yaml", []string{"proxy-status", "productpage-1", "-o", "yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := w.run(tc.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			golden(t, tc.name, out)
		})
	}
}

func TestProxyConfigGolden(t *testing.T) {
	w := needWorld(t)
	for _, typ := range []string{"clusters", "endpoints", "listeners", "routes", "secrets"} {
		t.Run(typ, func(t *testing.T) {
			code, out, errOut := w.run("proxy-config", "productpage-1", typ)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			golden(t, "proxy-config-"+typ, out)
		})
	}
	// What the manager serves a sidecar that rejected it is not what that sidecar runs: say so.
	t.Run("rejected", func(t *testing.T) {
		code, out, errOut := w.run("proxy-config", "legacy-1", "clusters")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if !strings.Contains(errOut, "warning: sidecar legacy-1.shop rejected this CDS version (cluster weft-nats: field type STATIC is not supported by this sidecar); it runs the last one it accepted (none)") {
			t.Errorf("no rejection warning on stderr: %q", errOut)
		}
		if !strings.Contains(out, "BlackHoleCluster") {
			t.Errorf("the served clusters are not printed:\n%s", out)
		}
	})
	t.Run("clusters-yaml", func(t *testing.T) {
		code, out, errOut := w.run("proxy-config", "productpage-1", "clusters", "-o", "yaml")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		golden(t, "proxy-config-clusters-yaml", out)
	})
	// config-dump is the whole document, secrets redacted.
	code, out, errOut := w.run("config-dump", "productpage-1")
	if code != 0 {
		t.Fatalf("config-dump: exit %d: %s", code, errOut)
	}
	var dump xds.ConfigDump
	if err := json.Unmarshal([]byte(out), &dump); err != nil {
		t.Fatalf("config-dump is not the dump's JSON: %v\n%s", err, out)
	}
	if dump.Node.ID != "productpage-1.shop" || len(dump.Resources["CDS"]) == 0 || len(dump.Resources["LDS"]) == 0 {
		t.Errorf("config-dump: node %q, %d clusters, %d listeners", dump.Node.ID, len(dump.Resources["CDS"]), len(dump.Resources["LDS"]))
	}
	if strings.Contains(out, "hunter2") || !strings.Contains(out, "[redacted]") {
		t.Errorf("config-dump does not redact the Redis passwords")
	}
	if code, _, errOut := w.run("config-dump", "nope-1"); code != 1 || !strings.Contains(errOut, `no sidecar "nope-1.shop" is connected`) {
		t.Errorf("config-dump of an unknown pod: exit %d, %q", code, errOut)
	}
	// No secret leaves the manager, in any format or type.
	for _, args := range [][]string{{"all"}, {"all", "-o", "json"}, {"listeners", "-o", "yaml"}, {"clusters", "-o", "json"}} {
		code, out, errOut := w.run(append([]string{"proxy-config", "productpage-1"}, args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		if strings.Contains(out, "hunter2") {
			t.Errorf("proxy-config %v printed a Redis password:\n%s", args, out)
		}
		// The passwords are SDS secrets: "all" lists them redacted; listeners and clusters
		// only name them.
		if args[0] == "all" && !strings.Contains(out, "[redacted]") {
			t.Errorf("proxy-config %v shows no [redacted] value, but the pool has passwords:\n%s", args, out)
		}
	}
}

func TestDescribeGolden(t *testing.T) {
	w := needWorld(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"describe-route", []string{"describe", "mr/reviews"}},
		{"describe-route-missing-service", []string{"describe", "meshroute", "ratings"}},
		{"describe-function", []string{"describe", "mfn/hello"}},
		{"describe-route-subsets", []string{"describe", "mr/reviews-canary"}},
		{"describe-redis-unserved", []string{"describe", "rp", "orphan"}},
		{"describe-redis-yaml", []string{"describe", "RedisProxy/cache", "-o", "yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := w.run(append(tc.args, "--show-events=false")...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			golden(t, tc.name, out)
		})
	}
}

// Bad input: every one exits 1 with a message saying what is wrong and what to do.
func TestBadInput(t *testing.T) {
	w := needWorld(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown kind", []string{"describe", "virtualservice/reviews"}, `unknown kind "virtualservice": use meshroute (mr), meshfunction (mfn) or redisproxy (rp)`},
		{"no name", []string{"describe", "mr/"}, "want <kind>/<name> or <kind> <name>"},
		{"missing object", []string{"describe", "mfn/nope"}, "MeshFunction nope not found in namespace shop"},
		{"missing pod", []string{"proxy-config", "nope-1", "routes"}, "pod nope-1 not found in namespace shop"},
		{"pod without sidecar", []string{"proxy-config", "legacy-2", "routes"}, `no sidecar "legacy-2.shop" is connected to this manager`},
		{"unknown config type", []string{"proxy-config", "productpage-1", "filters"}, `unknown configuration type "filters": use one of clusters, endpoints, listeners, routes, secrets, all`},
		{"unknown output", []string{"proxy-status", "-o", "toml"}, `unknown output format "toml": use one of wide, json, yaml`},
		{"pod not connected", []string{"proxy-status", "reviews-v1-0"}, "no sidecar of pod shop/reviews-v1-0 is connected"},
		{"bad manager url", []string{"proxy-status", "--manager-url", "127.0.0.1:15014"}, `--manager-url="127.0.0.1:15014": want a URL such as http://127.0.0.1:15014`},
		{"unknown command", []string{"proxy-stats"}, `unknown command "proxy-stats"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := w.run(tc.args...)
			if code != 1 {
				t.Fatalf("exit %d, want 1; stdout %q stderr %q", code, out, errOut)
			}
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr %q does not say %q", errOut, tc.want)
			}
			if !strings.HasPrefix(errOut, "weft: ") {
				t.Errorf("stderr %q does not start with the command name", errOut)
			}
		})
	}
}
