package snapshot

import (
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
)

// A Redis pool's passwords (client-pw, server-pw in testdata/redis.in.yaml, pool
// default/cache for app=web) are in the snapshot of a view only when the pool selects that
// view; labels of another namespace, other labels and another pool's standalone proxy get
// neither.
func TestRedisPasswordsOnlyInSelectedViews(t *testing.T) {
	in, _ := readInput(t, filepath.Join("testdata", "redis.in.yaml"))
	res := Translate(in)
	for _, c := range []struct {
		v    View
		want bool
	}{
		{View{Namespace: "default", Labels: map[string]string{"app": "web"}}, true},
		{View{Namespace: "default", RedisProxy: "default/cache"}, true},
		{View{Namespace: "default", Labels: map[string]string{"app": "api"}}, false},
		{View{Namespace: "other", Labels: map[string]string{"app": "web"}}, false},
		{View{Namespace: "default", RedisProxy: "default/sessions", Labels: map[string]string{"app": "web"}}, false},
		{View{Namespace: "default"}, false},
	} {
		snap, err := res.Snapshot(c.v)
		if err != nil {
			t.Fatal(err)
		}
		var found []string
		for _, rs := range snap.Resources {
			for _, r := range rs.Items {
				b, err := proto.Marshal(r.Resource)
				if err != nil {
					t.Fatal(err)
				}
				for _, pw := range []string{"client-pw", "server-pw"} {
					if strings.Contains(string(b), pw) {
						found = append(found, pw)
					}
				}
			}
		}
		if got := len(found) > 0; got != c.want {
			t.Errorf("view %+v: passwords %v, want present=%v", c.v, found, c.want)
		}
	}
}
