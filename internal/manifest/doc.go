// Package manifest is weft's Kubernetes installation: the YAML that `weft manifest` prints
// and deploy/weft.yaml holds (a ServiceAccount, RBAC, and the DaemonSet that runs the agent
// on every node), and what the DaemonSet's init container does (`weft install-cni`): copy
// weft-cni into the node's CNI binary directory and then, last, write the conflist.
//
// deploy/weft.yaml is generated: it is `weft manifest` with default options, and a test
// fails when the two differ (`go generate ./internal/manifest` rewrites it).
package manifest

//go:generate go test -run TestDeployManifestUpToDate -update .
