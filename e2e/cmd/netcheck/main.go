// Command netcheck is the test image of weft's end-to-end test: a small static binary that
// answers TCP and checks connectivity, so the image needs no shell and no libc.
//
//	netcheck pause                  wait for SIGTERM (the pod sandbox's entrypoint)
//	netcheck serve [-listen :8080]  greet every connection with "hello NAME" and echo it
//	netcheck connect ADDR...        dial each address, print "ADDR ok NAME"; exit 1 if any failed
//	netcheck stream ADDR            keep one connection, send a numbered line every interval and
//	                                expect its echo; print a status line every few seconds and
//	                                exit 1 ("stream BROKEN ...") on the first error
//
// NAME is $POD_NAME, else the hostname.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: netcheck pause|serve|connect|stream ...")
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "pause":
		<-ctx.Done()
	case "serve":
		err = serve(ctx, args)
	case "connect":
		err = connect(args)
	case "stream":
		err = stream(ctx, args)
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "netcheck:", err)
		os.Exit(1)
	}
}

func myName() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	n, _ := os.Hostname()
	return n
}

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", ":8080", "TCP address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); l.Close() }()
	fmt.Printf("serving on %s as %s\n", l.Addr(), myName())
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		go func() {
			defer c.Close()
			if _, err := fmt.Fprintf(c, "hello %s\n", myName()); err != nil {
				return
			}
			io.Copy(c, c)
		}()
	}
}

// dial connects and reads the greeting; it returns the peer's name.
func dial(addr string, timeout time.Duration) (net.Conn, *bufio.Reader, string, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, nil, "", err
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, nil, "", fmt.Errorf("reading the greeting: %w", err)
	}
	name, ok := strings.CutPrefix(strings.TrimSpace(line), "hello ")
	if !ok {
		c.Close()
		return nil, nil, "", fmt.Errorf("unexpected greeting %q", line)
	}
	return c, r, name, nil
}

func connect(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 3*time.Second, "per attempt")
	attempts := fs.Int("attempts", 3, "attempts per address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	failed := 0
	for _, addr := range fs.Args() {
		var err error
		for i := 0; i < *attempts; i++ {
			var c net.Conn
			var name string
			if c, _, name, err = dial(addr, *timeout); err == nil {
				c.Close()
				fmt.Printf("%s ok %s\n", addr, name)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil {
			fmt.Printf("%s FAIL %v\n", addr, err)
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d addresses failed", failed, fs.NArg())
	}
	return nil
}

func stream(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("stream", flag.ContinueOnError)
	interval := fs.Duration("interval", 200*time.Millisecond, "between messages")
	timeout := fs.Duration("timeout", 30*time.Second, "longest wait for an echo before the stream counts as broken")
	report := fs.Duration("report", 2*time.Second, "between status lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("stream wants one ADDR")
	}
	addr := fs.Arg(0)
	var (
		c    net.Conn
		r    *bufio.Reader
		name string
		err  error
	)
	// Only the first connection may be retried (the server pod may still be starting).
	for i := 0; i < 30; i++ {
		if c, r, name, err = dial(addr, 3*time.Second); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	local := c.LocalAddr().String()
	var n int
	var maxGap time.Duration
	last, lastReport := time.Now(), time.Time{}
	status := func(state string) {
		fmt.Printf("stream %s peer=%s local=%s sent=%d maxgap_ms=%d up_s=%d\n",
			state, name, local, n, maxGap.Milliseconds(), int(time.Since(start).Seconds()))
	}
	t := time.NewTicker(*interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			status("stopped")
			return nil
		case <-t.C:
		}
		n++
		c.SetDeadline(time.Now().Add(*timeout))
		msg := fmt.Sprintf("seq %d\n", n)
		if _, err := io.WriteString(c, msg); err != nil {
			status("BROKEN")
			return fmt.Errorf("write %d: %w", n, err)
		}
		line, err := r.ReadString('\n')
		if err != nil || line != msg {
			status("BROKEN")
			return fmt.Errorf("echo %d: got %q: %v", n, line, err)
		}
		now := time.Now()
		maxGap = max(maxGap, now.Sub(last))
		last = now
		if now.Sub(lastReport) >= *report {
			status("ok")
			lastReport = now
		}
	}
}
