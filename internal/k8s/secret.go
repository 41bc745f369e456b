package k8s

import (
	"context"
	"crypto/rand"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// GossipKeySecret is the Secret that holds the cluster's gossip key, under data key "key"
// (16, 24 or 32 raw bytes).
const (
	GossipKeySecret = "weft-gossip-key"
	gossipKeyField  = "key"
)

// GossipKey returns the cluster's gossip key from the Secret ns/name, creating it with 32
// random bytes if it does not exist. When agents race to create it, the API server lets
// exactly one Create succeed and the others read the winner's key.
func GossipKey(ctx context.Context, c Client, ns, name string) ([]byte, error) {
	secrets := c.Secrets(ns)
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		return keyOf(s)
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("reading the gossip key (Secret %s/%s): %w", ns, name, err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	_, err = secrets.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/name": "weft"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{gossipKeyField: key},
	}, metav1.CreateOptions{})
	if err == nil {
		return key, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating the gossip key (Secret %s/%s): %w", ns, name, err)
	}
	if s, err = secrets.Get(ctx, name, metav1.GetOptions{}); err != nil {
		return nil, fmt.Errorf("reading the gossip key (Secret %s/%s): %w", ns, name, err)
	}
	return keyOf(s)
}

func keyOf(s *corev1.Secret) ([]byte, error) {
	key := s.Data[gossipKeyField]
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	}
	return nil, fmt.Errorf("the gossip key in Secret %s/%s has %d bytes under %q, want 16, 24 or 32: delete the Secret to have a new one made, then restart every weft pod",
		s.Namespace, s.Name, len(key), gossipKeyField)
}
