package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// ClaimStore records which node owns which block. Claim must be atomic across every node
// that shares the store.
type ClaimStore interface {
	// Claim makes node the owner of block. It returns nil if node owns block afterwards
	// (also when it already did) and an error wrapping ErrClaimed if another node owns it.
	Claim(ctx context.Context, block netip.Prefix, node string) error
	// Release gives block back. Releasing a block node does not own is a no-op.
	Release(ctx context.Context, block netip.Prefix, node string) error
	// List returns every claimed block with its owner.
	List(ctx context.Context) (map[netip.Prefix]string, error)
}

// ErrClaimed means another node owns the block.
var ErrClaimed = errors.New("block owned by another node")

// FileStore keeps one file per claimed block in a directory that every node of the cluster
// shares — the lab's nodes share the machine's file system. A claim is a hard link of a
// fully written temporary file to the block's name: link(2) fails atomically if the name
// exists, so two nodes can never both own a block, and a reader never sees a half-written
// owner.
type FileStore struct {
	Dir string
}

func blockFile(block netip.Prefix) string {
	return strings.ReplaceAll(block.String(), "/", "_")
}

// Claim implements ClaimStore.
func (s FileStore) Claim(_ context.Context, block netip.Prefix, node string) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("creating claims directory: %w", err)
	}
	tmp, err := os.CreateTemp(s.Dir, ".claim-*")
	if err != nil {
		return fmt.Errorf("claiming %s: %w", block, err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(node)
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("claiming %s: %w", block, werr)
	}
	err = os.Link(tmp.Name(), filepath.Join(s.Dir, blockFile(block)))
	if err == nil {
		return nil
	}
	if !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("claiming %s: %w", block, err)
	}
	owner, rerr := s.owner(block)
	if rerr != nil {
		return rerr
	}
	if owner != node {
		return fmt.Errorf("%s: %w (%s)", block, ErrClaimed, owner)
	}
	return nil
}

func (s FileStore) owner(block netip.Prefix) (string, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, blockFile(block)))
	if err != nil {
		return "", fmt.Errorf("reading claim of %s: %w", block, err)
	}
	return string(b), nil
}

// Release implements ClaimStore. Only the owner ever removes a claim, so reading the owner
// and then removing the file cannot race with another node's claim.
func (s FileStore) Release(_ context.Context, block netip.Prefix, node string) error {
	owner, err := s.owner(block)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if owner != node {
		return nil
	}
	if err := os.Remove(filepath.Join(s.Dir, blockFile(block))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("releasing %s: %w", block, err)
	}
	return nil
}

// List implements ClaimStore.
func (s FileStore) List(_ context.Context) (map[netip.Prefix]string, error) {
	ents, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return map[netip.Prefix]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing claims: %w", err)
	}
	out := make(map[netip.Prefix]string, len(ents))
	for _, e := range ents {
		block, err := netip.ParsePrefix(strings.ReplaceAll(e.Name(), "_", "/"))
		if err != nil {
			continue // temporary files and anything else that is not a claim
		}
		owner, err := s.owner(block)
		if errors.Is(err, os.ErrNotExist) {
			continue // released meanwhile
		}
		if err != nil {
			return nil, err
		}
		out[block] = owner
	}
	return out, nil
}
