// Package soak holds weft's robustness tests: hitless agent restarts, CNI calls while the
// agent is down, a randomized churn that checks that no address or block is ever held
// twice, node death and return, resource leaks, and the local API's and gossip's access
// control. They drive real binaries in a lab (package lab) through its exported API.
//
// `make test` runs them small; `make soak` sets WEFT_SOAK=1 and runs them at full size
// (bounded: about ten minutes in all). WEFT_SOAK_SEED (or -seed) reproduces a churn run.
package soak
