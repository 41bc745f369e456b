package soak

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// udpStream sends numbered datagrams at a fixed rate from one pod to another and counts
// what arrives. Both sockets are created inside their pod's namespace (a socket stays in
// the namespace it was made in), so the goroutines using them may run anywhere.
type udpStream struct {
	send, recv *net.UDPConn
	interval   time.Duration

	sent     atomic.Uint64
	mu       sync.Mutex
	seen     map[uint64]bool
	dups     int
	stop     chan struct{}
	wg       sync.WaitGroup
	sendErrs atomic.Uint64
	firstErr atomic.Value  // string: the first send error, with its time
	sendDone chan struct{} // closed when the sender has stopped
}

const streamPort = 7777

func startUDP(fromNS, toNS string, to netip.Addr, rate int) (*udpStream, error) {
	s := &udpStream{interval: time.Second / time.Duration(rate), seen: map[uint64]bool{}, stop: make(chan struct{}), sendDone: make(chan struct{})}
	err := inNS(toNS, func() (err error) {
		s.recv, err = net.ListenUDP("udp4", &net.UDPAddr{Port: streamPort})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("UDP receiver in %s: %w", toNS, err)
	}
	err = inNS(fromNS, func() (err error) {
		s.send, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: to.AsSlice(), Port: streamPort})
		return err
	})
	if err != nil {
		s.recv.Close()
		return nil, fmt.Errorf("UDP sender in %s: %w", fromNS, err)
	}
	s.wg.Go(func() {
		buf := make([]byte, 64)
		for {
			n, err := s.recv.Read(buf)
			if err != nil {
				return
			}
			if n < 8 {
				continue
			}
			seq := binary.BigEndian.Uint64(buf)
			s.mu.Lock()
			if s.seen[seq] {
				s.dups++
			}
			s.seen[seq] = true
			s.mu.Unlock()
		}
	})
	s.wg.Go(func() {
		defer close(s.sendDone)
		t := time.NewTicker(s.interval)
		defer t.Stop()
		buf := make([]byte, 64)
		for seq := uint64(0); ; seq++ {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			binary.BigEndian.PutUint64(buf, seq)
			// Count the datagram as sent even if the kernel refused it: that is a loss.
			s.sent.Add(1)
			if _, err := s.send.Write(buf); err != nil {
				if s.sendErrs.Add(1) == 1 {
					s.firstErr.Store(fmt.Sprintf("seq %d at %s: %v", seq, time.Now().Format("15:04:05.000"), err))
				}
			}
		}
	})
	return s, nil
}

// finish stops sending, waits up to a second for stragglers and returns the figures.
func (s *udpStream) finish() (sent, lost, dups int, sendErrs uint64) {
	close(s.stop)
	<-s.sendDone // a tick that raced the stop may still be sending: let it finish
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		got := len(s.seen)
		s.mu.Unlock()
		if uint64(got) >= s.sent.Load() {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.send.Close()
	s.recv.Close()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := int(s.sent.Load())
	return n, n - len(s.seen), s.dups, s.sendErrs.Load()
}

// gaps describes the runs of missing sequence numbers as times since the stream started.
func (s *udpStream) gaps() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	n := s.sent.Load()
	for seq := uint64(0); seq < n; seq++ {
		if s.seen[seq] {
			continue
		}
		end := seq
		for end+1 < n && !s.seen[end+1] {
			end++
		}
		if b.Len() > 200 {
			b.WriteString(" ...")
			break
		}
		fmt.Fprintf(&b, " [%s: %d lost]", (time.Duration(seq) * s.interval).Round(time.Millisecond), end-seq+1)
		seq = end
	}
	return b.String()
}

// tcpStream writes fixed-size chunks every few milliseconds over one connection and
// records the longest gap between two reads on the receiving side.
type tcpStream struct {
	ln       net.Listener
	c, srv   net.Conn
	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	maxGap   time.Duration
	gapAt    time.Time
	received int64
	err      error
}

func startTCP(fromNS, toNS string, to netip.Addr) (*tcpStream, error) {
	s := &tcpStream{stop: make(chan struct{})}
	err := inNS(toNS, func() (err error) {
		s.ln, err = net.ListenTCP("tcp4", &net.TCPAddr{Port: streamPort})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("TCP listener in %s: %w", toNS, err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := s.ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	err = inNS(fromNS, func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		s.c, err = d.Dial("tcp4", netip.AddrPortFrom(to, streamPort).String())
		return err
	})
	if err != nil {
		s.ln.Close()
		return nil, fmt.Errorf("TCP connect from %s: %w", fromNS, err)
	}
	select {
	case c, ok := <-accepted:
		if !ok {
			s.c.Close()
			s.ln.Close()
			return nil, errors.New("TCP accept failed")
		}
		s.srv = c
	case <-time.After(5 * time.Second):
		s.c.Close()
		s.ln.Close()
		return nil, errors.New("TCP accept timed out")
	}
	s.wg.Go(func() {
		buf := make([]byte, 64<<10)
		last := time.Now()
		for {
			n, err := s.srv.Read(buf)
			now := time.Now()
			s.mu.Lock()
			if n > 0 {
				if g := now.Sub(last); g > s.maxGap {
					s.maxGap, s.gapAt = g, now
				}
				last = now
				s.received += int64(n)
			}
			if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.err = err
			}
			s.mu.Unlock()
			if err != nil {
				return
			}
		}
	})
	s.wg.Go(func() {
		chunk := make([]byte, 4096)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				_ = s.c.(*net.TCPConn).CloseWrite()
				return
			case <-t.C:
			}
			_ = s.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := s.c.Write(chunk); err != nil {
				s.mu.Lock()
				s.err = fmt.Errorf("write: %w", err)
				s.mu.Unlock()
				return
			}
		}
	})
	return s, nil
}

// finish stops the stream and returns the longest gap between reads, the bytes received
// and the first error.
func (s *tcpStream) finish(ctx context.Context) (maxGap time.Duration, received int64, err error) {
	close(s.stop)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	case <-time.After(15 * time.Second):
	}
	s.c.Close()
	s.srv.Close()
	s.ln.Close()
	<-done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxGap, s.received, s.err
}
