package xds

import (
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// typesWithoutSecrets are the types a view that holds no secret is sent: the tests whose
// views have no Redis password and no queue credential wait for these.
var typesWithoutSecrets = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}
