package e2e

import (
	"fmt"
	"path/filepath"
	"time"
)

// The control plane runs in node 0's namespaces: etcd on its loopback, the API server on
// its underlay address, the controller manager and the scheduler talking to it.

func (c *Cluster) startEtcd() error {
	cp := c.Nodes[0]
	d, err := StartDaemon("etcd", filepath.Join(cp.Dir, "etcd.log"), append(cp.nsenter(),
		"etcd", "--name", "cp", "--data-dir", filepath.Join(c.cfg.WorkDir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "cp=http://127.0.0.1:2380", "--logger", "zap", "--log-level", "warn")...)
	if err != nil {
		return err
	}
	c.etcd = d
	return nil
}

func (c *Cluster) apiServerArgs() []string {
	cp := c.Nodes[0]
	return append(cp.nsenter(), c.cfg.bin("kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0", "--secure-port=6443", "--advertise-address="+cp.IP,
		"--tls-cert-file="+c.pki.APICert, "--tls-private-key-file="+c.pki.APIKey,
		"--client-ca-file="+c.pki.CACert,
		"--token-auth-file="+c.pki.TokenFile,
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range="+serviceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+c.pki.SAPub,
		"--service-account-signing-key-file="+c.pki.SAKey,
		"--allow-privileged=true",
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--cert-dir="+filepath.Join(cp.Dir, "apiserver-certs"),
	)
}

// StartAPIServer starts kube-apiserver and waits until it is ready.
func (c *Cluster) StartAPIServer() error {
	d, err := StartDaemon("kube-apiserver", filepath.Join(c.Nodes[0].Dir, "kube-apiserver.log"), c.apiServerArgs()...)
	if err != nil {
		return err
	}
	c.apiserver = d
	return poll("kube-apiserver ready", 3*time.Minute, time.Second, func() error {
		if d.Exited() {
			return fmt.Errorf("exited:\n%s", d.Tail(20))
		}
		_, err := c.Kubectl("get", "--raw", "/readyz")
		return err
	})
}

// StopAPIServer stops kube-apiserver: SIGTERM, and SIGKILL after 10 s.
func (c *Cluster) StopAPIServer() {
	c.apiserver.Stop(10 * time.Second)
}

func (c *Cluster) startControllers() error {
	cp := c.Nodes[0]
	kc := c.pki.Kubeconfigs["admin"]
	cm, err := StartDaemon("kube-controller-manager", filepath.Join(cp.Dir, "kube-controller-manager.log"), append(cp.nsenter(),
		c.cfg.bin("kube-controller-manager"),
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--leader-elect=false", "--bind-address=127.0.0.1",
		"--service-account-private-key-file="+c.pki.SAKey,
		"--root-ca-file="+c.pki.CACert,
		"--use-service-account-credentials=false",
		"--profiling=false")...)
	if err != nil {
		return err
	}
	c.controllerManager = cm
	s, err := StartDaemon("kube-scheduler", filepath.Join(cp.Dir, "kube-scheduler.log"), append(cp.nsenter(),
		c.cfg.bin("kube-scheduler"),
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--profiling=false")...)
	if err != nil {
		return err
	}
	c.scheduler = s
	// Pods need their namespace's default ServiceAccount, which the controller manager makes.
	return poll("default ServiceAccount", 2*time.Minute, time.Second, func() error {
		if cm.Exited() {
			return fmt.Errorf("kube-controller-manager exited:\n%s", cm.Tail(20))
		}
		_, err := c.Kubectl("get", "serviceaccount", "default", "-n", "default")
		return err
	})
}
