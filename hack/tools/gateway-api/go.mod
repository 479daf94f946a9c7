module imageserver-sre/hack/tools/gateway-api

go 1.25.0

// Pinned for its CRD manifests (config/crd/standard), which ship in the module zip.
require sigs.k8s.io/gateway-api v1.6.3
