package image

import (
	"strings"
	"testing"
)

const (
	mgrDigest     = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	sidecarDigest = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

var pinned = map[string]string{
	"weft-manager": "registry.example/weft/weft-manager@" + mgrDigest,
	"weft-sidecar": "registry.example/weft/weft-sidecar@" + sidecarDigest,
}

func TestPin(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{"image field with tag",
			"        image: ghcr.io/weftmesh/weft-manager:v0.1.0\n",
			"        image: registry.example/weft/weft-manager@" + mgrDigest + "\n"},
		{"image field without tag",
			"  image: ghcr.io/weftmesh/weft-manager\n",
			"  image: registry.example/weft/weft-manager@" + mgrDigest + "\n"},
		{"quoted image",
			`  image: "ghcr.io/weftmesh/weft-manager:latest"` + "\n",
			`  image: "registry.example/weft/weft-manager@` + mgrDigest + `"` + "\n"},
		{"flag argument",
			"        - --sidecar-image=ghcr.io/weftmesh/weft-sidecar:v0.1.0\n",
			"        - --sidecar-image=registry.example/weft/weft-sidecar@" + sidecarDigest + "\n"},
		{"a stale digest is replaced",
			"  image: ghcr.io/weftmesh/weft-sidecar:v0.0.9@sha256:" + strings.Repeat("9", 64) + "\n",
			"  image: registry.example/weft/weft-sidecar@" + sidecarDigest + "\n"},
		{"another registry's image with the same path is left alone",
			"  image: mirror.example/ghcr.io/weftmesh/weft-manager:v0.1.0\n",
			"  image: mirror.example/ghcr.io/weftmesh/weft-manager:v0.1.0\n"},
		{"other images are left alone",
			"  image: redis:7\n  image: weft.dev/examples/echo:latest\n",
			"  image: redis:7\n  image: weft.dev/examples/echo:latest\n"},
		{"two references on one line",
			"  value: ghcr.io/weftmesh/weft-manager:a ghcr.io/weftmesh/weft-sidecar:b\n",
			"  value: registry.example/weft/weft-manager@" + mgrDigest + " registry.example/weft/weft-sidecar@" + sidecarDigest + "\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Pin([]byte(c.in), "ghcr.io/weftmesh", pinned)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != c.want {
				t.Errorf("got\n%s\nwant\n%s", got, c.want)
			}
		})
	}
}

// TestPinRefusesUnbuiltImages: a manifest naming an image this build did not make (a longer
// name sharing a prefix, or a new one) must fail the release, not ship a floating tag.
func TestPinRefusesUnbuiltImages(t *testing.T) {
	for _, in := range []string{
		"  image: ghcr.io/weftmesh/weft-init:v0.1.0\n",
		"  image: ghcr.io/weftmesh/weft-manager-debug:v0.1.0\n",
	} {
		_, err := Pin([]byte(in), "ghcr.io/weftmesh/", pinned)
		if err == nil || !strings.Contains(err.Error(), "did not produce") {
			t.Errorf("Pin(%q) = %v, want an error naming the unbuilt image", in, err)
		}
	}
}

func TestUnpinned(t *testing.T) {
	in := "image: ghcr.io/weftmesh/weft-manager@" + mgrDigest + "\n" +
		"- --sidecar-image=ghcr.io/weftmesh/weft-sidecar:v0.1.0\n" +
		"image: ghcr.io/weftmesh/weft:v1\n"
	got := Unpinned([]byte(in), "ghcr.io/weftmesh")
	want := []string{"ghcr.io/weftmesh/weft-sidecar:v0.1.0", "ghcr.io/weftmesh/weft:v1"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("Unpinned = %q, want %q", got, want)
	}
}
