package async

import "github.com/weftmesh/weft/sidecar/config"

// Config is one function's asynchronous-call policy. sidecar/config decodes it from the
// function cluster's weft.dev/function metadata (config.FunctionMeta.Policy); this package
// only runs by it.
type Config = config.AsyncPolicy

// DefaultConfig matches the MeshFunction CRD defaults.
func DefaultConfig() Config { return config.DefaultAsyncPolicy() }
