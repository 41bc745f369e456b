package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// apiServer is a minimal stand-in for kube-apiserver: it records each request and answers
// from a table, and streams watch events from a channel. It checks what NewClient sends
// on the wire (paths, verbs, query, bodies), which the fake clientset cannot.
type apiServer struct {
	t      *testing.T
	mu     sync.Mutex
	seen   []string // "VERB path?query"
	bodies map[string]string
	events chan string // JSON watch events for /api/v1/nodes?watch=true
}

func (s *apiServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	key := r.Method + " " + r.URL.Path
	s.mu.Lock()
	s.seen = append(s.seen, key+"?"+r.URL.RawQuery)
	s.bodies[key] = string(body)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case key == "GET /api/v1/nodes" && r.URL.Query().Get("watch") == "true":
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for {
			select {
			case ev, ok := <-s.events:
				if !ok {
					return
				}
				fmt.Fprintln(w, ev)
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			}
		}
	case key == "GET /api/v1/nodes":
		fmt.Fprint(w, `{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"10"},"items":[`+
			nodeJSON("self", "192.0.2.1", "9")+`,`+nodeJSON("n2", "192.0.2.2", "10")+`]}`)
	case key == "GET /api/v1/nodes/n2":
		fmt.Fprint(w, nodeJSON("n2", "192.0.2.2", "10"))
	case key == "PATCH /api/v1/nodes/n2/status":
		fmt.Fprint(w, nodeJSON("n2", "192.0.2.2", "11"))
	case key == "POST /apis/coordination.k8s.io/v1/namespaces/kube-system/leases":
		w.WriteHeader(http.StatusConflict)
		fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"AlreadyExists","code":409,"details":{"name":"weft-block-10-32-0-64-26","group":"coordination.k8s.io","kind":"leases"}}`)
	case key == "GET /apis/coordination.k8s.io/v1/namespaces/kube-system/leases/weft-block-10-32-0-64-26":
		fmt.Fprint(w, `{"kind":"Lease","apiVersion":"coordination.k8s.io/v1","metadata":{"name":"weft-block-10-32-0-64-26","namespace":"kube-system","uid":"u1","resourceVersion":"7"},"spec":{"holderIdentity":"n2"}}`)
	case key == "DELETE /apis/coordination.k8s.io/v1/namespaces/kube-system/leases/weft-block-10-32-0-64-26":
		fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Success"}`)
	case key == "GET /api/v1/namespaces/kube-system/secrets/weft-gossip-key":
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`)
	case key == "POST /api/v1/namespaces/kube-system/secrets":
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, string(body))
	default:
		s.t.Errorf("unexpected request %s?%s", key, r.URL.RawQuery)
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`)
	}
}

func nodeJSON(name, ip, rv string) string {
	return fmt.Sprintf(`{"kind":"Node","apiVersion":"v1","metadata":{"name":%q,"resourceVersion":%q},"status":{"addresses":[{"type":"InternalIP","address":%q}]}}`, name, rv, ip)
}

func (s *apiServer) sawWatch() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.seen {
		if strings.HasPrefix(r, "GET /api/v1/nodes?") && strings.Contains(r, "watch=true") {
			return true
		}
	}
	return false
}

func (s *apiServer) body(key string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bodies[key]
}

// TestClientOnTheWire drives the real Client against apiServer: the Node informer's list
// and watch (a deletion arrives through the watch), a Lease claim that finds the block
// taken, a release with its preconditions, the gossip-key Secret and the status patch.
func TestClientOnTheWire(t *testing.T) {
	srv := &apiServer{t: t, bodies: map[string]string{}, events: make(chan string, 4)}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	t.Cleanup(func() { close(srv.events) })
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "`+hs.URL+`"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Node informer: list, then a deletion through the watch.
	deleted := make(chan string, 1)
	nodes, err := NewNodes(c, "self", quiet(), func(name string) { deleted <- name })
	if err != nil {
		t.Fatal(err)
	}
	nctx, stop := context.WithCancel(ctx)
	defer stop()
	nodes.Start(nctx)
	if !nodes.WaitSynced(ctx) {
		t.Fatal("Node informer never synced")
	}
	if peers, err := nodes.Peers(ctx); err != nil || len(peers) != 1 || peers[0] != "192.0.2.2" {
		t.Fatalf("Peers = %v, %v; want [192.0.2.2]", peers, err)
	}
	ev, _ := json.Marshal(map[string]any{"type": watch.Deleted, "object": json.RawMessage(nodeJSON("n2", "192.0.2.2", "12"))})
	deadline := time.Now().Add(10 * time.Second)
	for !srv.sawWatch() {
		if time.Now().After(deadline) {
			t.Fatal("the informer never opened a watch")
		}
		time.Sleep(20 * time.Millisecond)
	}
	srv.events <- string(ev)
	select {
	case name := <-deleted:
		if name != "n2" {
			t.Errorf("deleted %q, want n2", name)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the deletion sent through the watch never reached the handler")
	}
	if nodes.Allowed("n2") {
		t.Error("n2 still allowed after its deletion")
	}

	// Nodes: Get and the status patch.
	if ip, err := NodeInternalIP(ctx, c, "n2"); err != nil || ip.String() != "192.0.2.2" {
		t.Errorf("NodeInternalIP = %v, %v", ip, err)
	}
	if err := SetNetworkAvailable(ctx, c, "n2"); err != nil {
		t.Errorf("SetNetworkAvailable: %v", err)
	}
	if b := srv.body("PATCH /api/v1/nodes/n2/status"); !strings.Contains(b, `"NetworkUnavailable"`) || !strings.Contains(b, ReasonUp) {
		t.Errorf("status patch body = %s", b)
	}

	// Leases: the claim finds the block held by n2; the release of n2's claim deletes it
	// with the UID and resourceVersion it read.
	store := &LeaseStore{Client: c, Namespace: "kube-system"}
	if err := store.Claim(ctx, blk1, "self"); err == nil || !strings.Contains(err.Error(), "n2") {
		t.Errorf("Claim of a block n2 holds: %v", err)
	}
	var lease coordinationv1.Lease
	if err := json.Unmarshal([]byte(srv.body("POST /apis/coordination.k8s.io/v1/namespaces/kube-system/leases")), &lease); err != nil ||
		lease.Name != LeaseName(blk1) || *lease.Spec.HolderIdentity != "self" || lease.Labels[BlockLabel] != "true" {
		t.Errorf("Lease sent = %+v (%v)", lease, err)
	}
	if err := store.Release(ctx, blk1, "n2"); err != nil {
		t.Errorf("Release: %v", err)
	}
	var del metav1.DeleteOptions
	if err := json.Unmarshal([]byte(srv.body("DELETE /apis/coordination.k8s.io/v1/namespaces/kube-system/leases/weft-block-10-32-0-64-26")), &del); err != nil ||
		del.Preconditions == nil || *del.Preconditions.UID != "u1" || *del.Preconditions.ResourceVersion != "7" {
		t.Errorf("delete options sent = %+v (%v)", del, err)
	}

	// Secrets: absent, so the first agent creates it.
	key, err := GossipKey(ctx, c, "kube-system", GossipKeySecret)
	if err != nil || len(key) != 32 {
		t.Fatalf("GossipKey = %d bytes, %v", len(key), err)
	}
	var sec corev1.Secret
	if err := json.Unmarshal([]byte(srv.body("POST /api/v1/namespaces/kube-system/secrets")), &sec); err != nil || sec.Name != GossipKeySecret || len(sec.Data["key"]) != 32 {
		t.Errorf("Secret sent = %+v (%v)", sec.ObjectMeta, err)
	}
	if _, err := c.Secrets("kube-system").Get(ctx, GossipKeySecret, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("Get of a missing Secret: %v, want NotFound", err)
	}
}
