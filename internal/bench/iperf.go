package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

const (
	iperfPort = 5201
	rrPort    = 5301
	// rrSize is the request and response size of the latency probe.
	rrSize = 64
)

// runInNS runs cmd inside namespace nsName to completion, killed when ctx ends.
func runInNS(ctx context.Context, nsName string, cmd *exec.Cmd) ([]byte, error) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	h, err := ns.GetNS(nsFile(nsName))
	if err != nil {
		return nil, err
	}
	defer h.Close()
	if err := h.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		stop(cmd)
		<-done
		err = ctx.Err()
	}
	if err != nil {
		return out.Bytes(), fmt.Errorf("%s in %s: %w: %s", cmd.Args, nsName, err, bytes.TrimSpace(errb.Bytes()))
	}
	return out.Bytes(), nil
}

// iperfResult is what the harness reads from iperf3 --json.
type iperfResult struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		Sum struct { // UDP
			BitsPerSecond float64 `json:"bits_per_second"`
			LostPercent   float64 `json:"lost_percent"`
			JitterMS      float64 `json:"jitter_ms"`
		} `json:"sum"`
	} `json:"end"`
	Error string `json:"error"`
}

// pinArgs pins the iperf3 client to CPU 0 and the server to CPU 1 (iperf3 -A) where there
// are two CPUs or more. Left to the scheduler, a single stream's client and server share a
// CPU in some runs and not in others, which made one path's throughput swing by a third
// between rounds; pinned, every path runs with the same placement.
func pinArgs() []string {
	if runtime.NumCPU() < 2 {
		return nil
	}
	return []string{"-A", "0,1"}
}

// iperf runs an iperf3 client in src against dst with extra args; it retries a
// couple of times when the server is not up yet or busy.
func iperf(ctx context.Context, src string, dst netip.Addr, args ...string) (iperfResult, error) {
	var last error
	for try := range 4 {
		if try > 0 {
			time.Sleep(300 * time.Millisecond)
		}
		a := append([]string{"-c", dst.String(), "-p", strconv.Itoa(iperfPort), "--json", "--connect-timeout", "2000"}, pinArgs()...)
		a = append(a, args...)
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		out, err := runInNS(cctx, src, exec.Command("iperf3", a...))
		cancel()
		var r iperfResult
		if jerr := json.Unmarshal(out, &r); jerr == nil && r.Error == "" && err == nil {
			return r, nil
		} else if r.Error != "" {
			err = errors.New(r.Error)
		} else if err == nil {
			err = jerr
		}
		last = err
		if ctx.Err() != nil {
			break
		}
	}
	return iperfResult{}, fmt.Errorf("iperf3 %s -> %s: %w", src, dst, last)
}

// rrServer serves fixed-size request/response on a listener made inside nsName.
func rrServer(ctx context.Context, nsName string) error {
	var ln net.Listener
	err := inNS(nsName, func() (err error) {
		ln, err = net.Listen("tcp4", ":"+strconv.Itoa(rrPort))
		return err
	})
	if err != nil {
		return fmt.Errorf("request/response server in %s: %w", nsName, err)
	}
	go func() { <-ctx.Done(); ln.Close() }()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, rrSize)
				for {
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return nil
}

// rr measures n request/response round trips on one TCP connection from src to dst.
func rr(ctx context.Context, src string, dst netip.Addr, n int) ([]time.Duration, error) {
	var c net.Conn
	err := inNS(src, func() (err error) {
		d := net.Dialer{Timeout: 3 * time.Second}
		c, err = d.DialContext(ctx, "tcp4", netip.AddrPortFrom(dst, rrPort).String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("request/response %s -> %s: %w", src, dst, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	buf := make([]byte, rrSize)
	out := make([]time.Duration, 0, n)
	warm := n / 10
	for i := range n + warm {
		binary.BigEndian.PutUint64(buf, uint64(i))
		t := time.Now()
		if _, err := c.Write(buf); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return nil, err
		}
		if i >= warm {
			out = append(out, time.Since(t))
		}
	}
	return out, nil
}
