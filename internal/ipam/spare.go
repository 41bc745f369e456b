package ipam

import (
	"context"
	"log/slog"
	"slices"
	"time"
)

// Spare blocks: headroom for when the claim store is unreachable.
//
// With Config.SpareBlocks = N the node keeps at least N claimed blocks besides its home
// block that hold no lease. Handing out the first address of a spare makes it a block in
// use; that wakes a background loop which claims a new spare, with no lock held while it
// talks to the store, so Allocate never waits for the store while the node has a free
// address. If the store is down the loop retries with backoff, and pods keep starting
// until the node's blocks are really full; only then does Allocate claim synchronously
// (and fail while the store is down). Emptied blocks are given back except the N spares.

const (
	spareRetryMin = 200 * time.Millisecond
	spareRetryMax = 30 * time.Second
)

func (a *Allocator) logger() *slog.Logger {
	if a.cfg.Logger != nil {
		return a.cfg.Logger
	}
	return slog.Default()
}

// spareDeficit is how many spares are missing. Called with a.mu held.
func (a *Allocator) spareDeficit() int {
	empty := 0
	for _, blk := range a.blocks[1:] {
		if a.usedIn(blk) == 0 {
			empty++
		}
	}
	return a.cfg.SpareBlocks - empty
}

// startSpares tops up once (failures are left to the loop) and starts the loop, which
// ends with ctx.
func (a *Allocator) startSpares(ctx context.Context) {
	if a.cfg.SpareBlocks <= 0 {
		return
	}
	a.spareKick = make(chan struct{}, 1)
	if err := a.topUp(ctx); err != nil {
		a.logger().Warn("claiming a spare address block (will retry)", "err", err)
	}
	go a.spareLoop(ctx)
}

// kickSpares asks the loop to check the spares; it never blocks.
func (a *Allocator) kickSpares() {
	if a.spareKick == nil {
		return
	}
	select {
	case a.spareKick <- struct{}{}:
	default:
	}
}

func (a *Allocator) spareLoop(ctx context.Context) {
	wait := spareRetryMin
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.spareKick:
		}
		for {
			err := a.topUp(ctx)
			if err == nil || ctx.Err() != nil {
				wait = spareRetryMin
				break
			}
			a.logger().Warn("claiming a spare address block (will retry)", "err", err, "retry", wait)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, spareRetryMax)
		}
	}
}

// topUp claims blocks until the node has its spares. The store is called with no lock
// held; the block is added under the lock afterwards.
func (a *Allocator) topUp(ctx context.Context) error {
	for {
		a.mu.Lock()
		need := a.spareDeficit()
		owned := slices.Clone(a.blocks)
		a.mu.Unlock()
		if need <= 0 {
			return nil
		}
		blk, err := a.claimFree(ctx, owned)
		if err != nil {
			return err
		}
		changed := false
		a.mu.Lock()
		if !slices.Contains(a.blocks, blk) { // Allocate may have claimed it meanwhile
			a.blocks = append(a.blocks, blk)
			if err := a.persist(); err != nil {
				a.blocks = a.blocks[:len(a.blocks)-1]
				a.mu.Unlock()
				_ = a.cfg.Store.Release(ctx, blk, a.cfg.Node)
				return err
			}
			changed = true
		}
		a.mu.Unlock()
		a.notifyIf(&changed)
	}
}
