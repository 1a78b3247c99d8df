package admin

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/contract"
)

// The async queue's token never shows in /config_dump, and the live config keeps it.
func TestRedactHidesTheQueueToken(t *testing.T) {
	md, _ := structpb.NewStruct(map[string]any{"url": "nats://10.0.0.1:4222", "token": "s3cret-token"})
	live := &clusterv3.Cluster{Name: "weft-nats", Metadata: &corev3.Metadata{
		FilterMetadata: map[string]*structpb.Struct{contract.QueueMetadataKey: md}}}
	out, err := protojson.Marshal(Redact(live))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "s3cret-token") || !strings.Contains(string(out), "nats://10.0.0.1:4222") {
		t.Fatalf("redacted dump %s: want the URL and no token", out)
	}
	if live.GetMetadata().GetFilterMetadata()[contract.QueueMetadataKey].GetFields()["token"].GetStringValue() != "s3cret-token" {
		t.Fatal("redaction changed the live config")
	}
}

// An identity's NATS password never shows in /config_dump; its user name and inbox prefix
// (not secret) do, so an operator can tell which identity a sidecar acts as.
func TestRedactHidesTheQueuePassword(t *testing.T) {
	md := contract.QueueMeta{URL: "nats://10.0.0.1:4222", User: "fn.shop.resize", Password: "0123abcd-pass", InboxPrefix: "_INBOX.fn.shop.resize"}.Encode()
	live := &clusterv3.Cluster{Name: "weft-nats", Metadata: &corev3.Metadata{
		FilterMetadata: map[string]*structpb.Struct{contract.QueueMetadataKey: md}}}
	out, err := protojson.Marshal(Redact(live))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "0123abcd-pass") || !strings.Contains(string(out), "fn.shop.resize") {
		t.Fatalf("redacted dump %s: want the user and no password", out)
	}
	if live.GetMetadata().GetFilterMetadata()[contract.QueueMetadataKey].GetFields()["password"].GetStringValue() != "0123abcd-pass" {
		t.Fatal("redaction changed the live config")
	}
}

// An SDS secret shows in /config_dump by name with every value redacted, whichever form
// it has (one value, or several by key), and the live secret keeps its values.
func TestRedactHidesSDSSecrets(t *testing.T) {
	for _, live := range []*tlsv3.Secret{
		{Name: "redis/shop/cache/upstream", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
			Secret: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "up-s3cret"}}}}},
		{Name: "queue/shop", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
			Secrets: map[string]*corev3.DataSource{contract.QueueSecretPassword: {Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("up-s3cret")}}}}}},
	} {
		out, err := protojson.Marshal(Redact(live))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "up-s3cret") || strings.Contains(string(out), "dXAtczNjcmV0") || // base64 of it
			!strings.Contains(string(out), live.GetName()) || !strings.Contains(string(out), "[redacted]") {
			t.Errorf("redacted dump %s: want the name, [redacted] and no value", out)
		}
		if b, _ := protojson.Marshal(live); !strings.Contains(string(b), "s3cret") && !strings.Contains(string(b), "dXAtczNjcmV0") {
			t.Errorf("redaction changed the live secret: %s", b)
		}
	}
}
