// Package bench is weft's benchmark harness: it measures the datapath, the CNI plugin,
// convergence, control-plane cost and kernel state in lab clusters (internal/lab) and
// next to hand-built references in the same run, and reports each figure with its
// spread and, where weft has a goal, whether the goal was met.
//
// Every path is measured against its reference within one run, alternating between
// them, and a goal is judged on the median of the per-round ratios, so a machine that is
// busy with other work slows weft and its reference alike instead of skewing the result.
//
// All traffic stays between namespaces the harness creates (the lab's, and its own
// prefixed "wbench-"), on addresses from 198.18.0.0/15. Everything it creates —
// namespaces, links, processes — is removed when a run ends, fails or is interrupted.
package bench
