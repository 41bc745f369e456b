package e2e

import (
	"fmt"
	"strings"
)

// The few fields of Kubernetes objects the test reads, decoded from `kubectl -o json`
// (the product's module does not depend on k8s.io/api for its test).

type condition struct {
	Type, Status, Reason, Message string
}

// NodeInfo is a Node object.
type NodeInfo struct {
	Metadata struct{ Name string }
	Status   struct {
		Conditions []condition
		Addresses  []struct{ Type, Address string }
	}
}

// Condition returns the node's condition of type t.
func (n NodeInfo) Condition(t string) condition {
	for _, c := range n.Status.Conditions {
		if c.Type == t {
			return c
		}
	}
	return condition{Type: t, Status: "Unknown"}
}

// PodInfo is a Pod object.
type PodInfo struct {
	Metadata struct {
		Name   string
		Labels map[string]string
	}
	Spec   struct{ NodeName string }
	Status struct {
		Phase             string
		PodIP             string
		HostIP            string
		Conditions        []condition
		ContainerStatuses []struct {
			Name         string
			Ready        bool
			RestartCount int
		}
	}
}

// Ready reports the pod's Ready condition.
func (p PodInfo) Ready() bool {
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

// Restarts sums the restarts of the pod's containers.
func (p PodInfo) Restarts() int {
	n := 0
	for _, c := range p.Status.ContainerStatuses {
		n += c.RestartCount
	}
	return n
}

// GetNodes lists the Node objects.
func (c *Cluster) GetNodes() ([]NodeInfo, error) {
	var l struct{ Items []NodeInfo }
	err := c.KubectlJSON(&l, "get", "nodes")
	return l.Items, err
}

// GetPods lists the pods of namespace ns (all if "") matching the label selector.
func (c *Cluster) GetPods(ns, selector string) ([]PodInfo, error) {
	var l struct{ Items []PodInfo }
	args := []string{"get", "pods", "-A"}
	if ns != "" {
		args = []string{"get", "pods", "-n", ns}
	}
	if selector != "" {
		args = append(args, "-l", selector)
	}
	err := c.KubectlJSON(&l, args...)
	return l.Items, err
}

// DaemonSetStatus is the part of a DaemonSet's status `kubectl get ds` prints.
type DaemonSetStatus struct {
	Metadata struct{ Generation int64 }
	Status   struct {
		DesiredNumberScheduled int
		CurrentNumberScheduled int
		NumberReady            int
		UpdatedNumberScheduled int
		NumberAvailable        int
		ObservedGeneration     int64
	}
}

// GetDaemonSet reads a DaemonSet's status.
func (c *Cluster) GetDaemonSet(ns, name string) (DaemonSetStatus, error) {
	var ds DaemonSetStatus
	err := c.KubectlJSON(&ds, "get", "ds", "-n", ns, name)
	return ds, err
}

// Apply applies a manifest given as text.
func (c *Cluster) Apply(manifest string) error {
	_, err := runShortStdin(manifest, c.kubectlArgv("apply", "-f", "-")...)
	return err
}

// nodesReady returns an error naming the nodes of names that are not Ready.
func (c *Cluster) nodesReady(names []string) error {
	nodes, err := c.GetNodes()
	if err != nil {
		return err
	}
	byName := map[string]NodeInfo{}
	for _, n := range nodes {
		byName[n.Metadata.Name] = n
	}
	var notReady []string
	for _, name := range names {
		n, ok := byName[name]
		if !ok {
			notReady = append(notReady, name+" (missing)")
			continue
		}
		if r := n.Condition("Ready"); r.Status != "True" {
			notReady = append(notReady, fmt.Sprintf("%s (%s: %s)", name, r.Reason, r.Message))
		}
	}
	if len(notReady) > 0 {
		return fmt.Errorf("not Ready: %s", strings.Join(notReady, "; "))
	}
	return nil
}

// NodeNames returns the names of the cluster's nodes.
func (c *Cluster) NodeNames() []string {
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.Name)
	}
	return out
}
