package k8s

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/internal/version"
)

// DefaultNamespace holds weft's Leases and Secret.
const DefaultNamespace = "kube-system"

// Client is the part of the Kubernetes API weft uses: Nodes, Leases and Secrets. The
// method sets are those of client-go's typed clients, so a fake clientset serves in tests.
//
// weft does not use client-go's kubernetes.Clientset: its scheme registers every API
// group, which makes the agent's binary three times as large and costs resident memory
// on every node. The real Client (NewClient) knows only core/v1 and coordination/v1.
type Client interface {
	Nodes() NodeAPI
	Leases(namespace string) LeaseAPI
	Secrets(namespace string) SecretAPI
}

// NodeAPI is what weft does with Nodes.
type NodeAPI interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error)
	List(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	PatchStatus(ctx context.Context, name string, data []byte) (*corev1.Node, error)
}

// LeaseAPI is what weft does with Leases (its block claims).
type LeaseAPI interface {
	Create(ctx context.Context, l *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error)
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*coordinationv1.Lease, error)
	List(ctx context.Context, opts metav1.ListOptions) (*coordinationv1.LeaseList, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
}

// SecretAPI is what weft does with Secrets (the gossip key).
type SecretAPI interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error)
	Create(ctx context.Context, s *corev1.Secret, opts metav1.CreateOptions) (*corev1.Secret, error)
}

// NewClient connects with kubeconfig, or with the pod's service account when kubeconfig
// is "".
func NewClient(kubeconfig string) (Client, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster API config: %w (outside a pod, pass --kubeconfig)", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
		return nil, fmt.Errorf("reading --kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.UserAgent = "weft/" + version.Version
	cfg.QPS, cfg.Burst = 20, 40

	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, coordinationv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, fmt.Errorf("API scheme: %w", err)
		}
	}
	params := runtime.NewParameterCodec(scheme)
	codecs := serializer.NewCodecFactory(scheme).WithoutConversion()
	restFor := func(gv schema.GroupVersion, apiPath string) (*rest.RESTClient, error) {
		c := *cfg
		c.GroupVersion = &gv
		c.APIPath = apiPath
		c.ContentType = runtime.ContentTypeJSON
		c.NegotiatedSerializer = codecs
		return rest.RESTClientFor(&c)
	}
	core, err := restFor(corev1.SchemeGroupVersion, "/api")
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	coord, err := restFor(coordinationv1.SchemeGroupVersion, "/apis")
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	return &client{core: core, coord: coord, params: params}, nil
}

// client implements Client with two REST clients and one small scheme.
type client struct {
	core, coord *rest.RESTClient
	params      runtime.ParameterCodec
}

func (c *client) Nodes() NodeAPI {
	return nodeAPI{resource[*corev1.Node, *corev1.NodeList]{c.core, c.params, "", "nodes"}}
}

func (c *client) Leases(ns string) LeaseAPI {
	return leaseAPI{resource[*coordinationv1.Lease, *coordinationv1.LeaseList]{c.coord, c.params, ns, "leases"}}
}

func (c *client) Secrets(ns string) SecretAPI {
	return secretAPI{resource[*corev1.Secret, *corev1.SecretList]{c.core, c.params, ns, "secrets"}}
}

// resource is one kind's REST calls; T is its object type, L its list type.
type resource[T, L runtime.Object] struct {
	c        *rest.RESTClient
	params   runtime.ParameterCodec
	ns, name string
}

func (r resource[T, L]) req(verb string) *rest.Request {
	return r.c.Verb(verb).NamespaceIfScoped(r.ns, r.ns != "").Resource(r.name)
}

func (r resource[T, L]) get(ctx context.Context, name string, opts metav1.GetOptions, into T) (T, error) {
	err := r.req("GET").Name(name).VersionedParams(&opts, r.params).Do(ctx).Into(into)
	return into, err
}

func (r resource[T, L]) list(ctx context.Context, opts metav1.ListOptions, into L) (L, error) {
	err := r.req("GET").VersionedParams(&opts, r.params).Do(ctx).Into(into)
	return into, err
}

func (r resource[T, L]) watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return r.req("GET").VersionedParams(&opts, r.params).Watch(ctx)
}

func (r resource[T, L]) create(ctx context.Context, obj T, opts metav1.CreateOptions, into T) (T, error) {
	err := r.req("POST").VersionedParams(&opts, r.params).Body(obj).Do(ctx).Into(into)
	return into, err
}

func (r resource[T, L]) delete(ctx context.Context, name string, opts metav1.DeleteOptions) error {
	return r.req("DELETE").Name(name).Body(&opts).Do(ctx).Error()
}

type nodeAPI struct {
	r resource[*corev1.Node, *corev1.NodeList]
}

func (a nodeAPI) Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error) {
	return a.r.get(ctx, name, opts, &corev1.Node{})
}

func (a nodeAPI) List(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	return a.r.list(ctx, opts, &corev1.NodeList{})
}

func (a nodeAPI) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return a.r.watch(ctx, opts)
}

func (a nodeAPI) PatchStatus(ctx context.Context, name string, data []byte) (*corev1.Node, error) {
	out := &corev1.Node{}
	err := a.r.c.Patch(types.StrategicMergePatchType).Resource("nodes").Name(name).SubResource("status").
		Body(data).Do(ctx).Into(out)
	return out, err
}

type leaseAPI struct {
	r resource[*coordinationv1.Lease, *coordinationv1.LeaseList]
}

func (a leaseAPI) Create(ctx context.Context, l *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error) {
	return a.r.create(ctx, l, opts, &coordinationv1.Lease{})
}

func (a leaseAPI) Get(ctx context.Context, name string, opts metav1.GetOptions) (*coordinationv1.Lease, error) {
	return a.r.get(ctx, name, opts, &coordinationv1.Lease{})
}

func (a leaseAPI) List(ctx context.Context, opts metav1.ListOptions) (*coordinationv1.LeaseList, error) {
	return a.r.list(ctx, opts, &coordinationv1.LeaseList{})
}

func (a leaseAPI) Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error {
	return a.r.delete(ctx, name, opts)
}

type secretAPI struct {
	r resource[*corev1.Secret, *corev1.SecretList]
}

func (a secretAPI) Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error) {
	return a.r.get(ctx, name, opts, &corev1.Secret{})
}

func (a secretAPI) Create(ctx context.Context, s *corev1.Secret, opts metav1.CreateOptions) (*corev1.Secret, error) {
	return a.r.create(ctx, s, opts, &corev1.Secret{})
}

// callTimeout bounds each single API call, so a hung API server shows up as an error.
const callTimeout = 15 * time.Second

// Retry runs fn until it succeeds or ctx ends, with backoff from 1 s to 30 s, logging each
// failure: start-up steps wait out an API server that is not there yet.
func Retry(ctx context.Context, log *slog.Logger, what string, fn func(context.Context) error) error {
	wait := time.Second
	for {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		err := fn(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		log.Warn(what+" (will retry)", "err", err, "retry", wait)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}
