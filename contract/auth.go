package contract

// How a sidecar authenticates to the control plane (docs/zero-trust.md): it presents a
// projected ServiceAccount token, bound to its pod, as gRPC metadata on every stream and
// call, over TLS verified with the CA bundle mounted next to the token.
const (
	// TokenAudience is the audience of the projected token; the manager's TokenReview asks
	// for it, so a token minted for anything else (the API server, another mesh) is refused.
	TokenAudience = "weft"
	// TokenExpirationSeconds is the projected token's lifetime; the kubelet rotates it at
	// 80 % of that, and the manager ends a stream when the token it opened with expires.
	TokenExpirationSeconds = 3600
	// AuthorizationHeader is the gRPC metadata key the token travels in.
	AuthorizationHeader = "authorization"
	// BearerPrefix precedes the token in AuthorizationHeader.
	BearerPrefix = "Bearer "
	// TokenVolumeName is the projected volume holding the token and the CA bundle.
	TokenVolumeName = "weft-token"
	// TokenDir is where the sidecar container mounts TokenVolumeName.
	TokenDir = "/var/run/secrets/weft/tokens"
	// TokenFile is the token's file name in TokenDir.
	TokenFile = "weft-token"
	// CAFile is the control plane's CA bundle's file name in TokenDir.
	CAFile = "ca.crt"
	// TokenPath and CAPath are the sidecar's defaults for --xds-token-file and --xds-ca-file.
	TokenPath = TokenDir + "/" + TokenFile
	CAPath    = TokenDir + "/" + CAFile
	// AnnotationXDSCA carries the control plane's CA bundle (PEM, public) on a meshed pod;
	// the projected volume writes it to CAFile through the downward API, so no ConfigMap
	// needs copying into every namespace.
	AnnotationXDSCA = "weft.dev/xds-ca"
	// XDSServerName is the name the xDS serving certificate is issued for and the sidecar
	// verifies, whatever address it dials.
	XDSServerName = "weft-xds.weft.internal"
)
