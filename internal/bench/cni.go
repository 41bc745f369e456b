package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/weftnet/weft/internal/lab"
)

// cniVersionBoth is the CNI version of both chains: Debian's portmap speaks up to 1.0.0.
// Both chains offer hostPort (capability portMappings): the reference through portmap,
// weft-cni through the agent, which forwards host ports in its own nftables table.
const cniVersionBoth = "1.0.0"

// chain is one CNI plugin chain under test.
type chain struct {
	name string
	list *libcni.NetworkConfigList
}

func portmapConf() map[string]any {
	return map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true}
}

func confList(name string, plugins ...map[string]any) (*libcni.NetworkConfigList, error) {
	b, err := json.Marshal(map[string]any{"cniVersion": cniVersionBoth, "name": name, "plugins": plugins})
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes(b)
}

// cniLatency is item 2: CNI ADD and DEL latency of weft-cni against the reference
// bridge + host-local + portmap, both through libcni inside one lab node,
// for pods created one at a time and 10 and 100 at once.
func cniLatency(ctx context.Context, o Options, r *Report) error {
	return withLab(ctx, o, 1, 0, func(l *lab.Lab) error {
		e := newEnv()
		defer e.close()
		node := l.Nodes()[0]
		tmp, err := os.MkdirTemp("", "wbench-cni-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		binDir := o.CNIBinDir
		if binDir == "" {
			binDir = filepath.Dir(o.WeftBin)
		}
		cni := libcni.NewCNIConfigWithCacheDir([]string{binDir, "/usr/lib/cni"}, filepath.Join(tmp, "cache"), nil)
		weft, err := confList("weft", map[string]any{
			"type": "weft-cni", "socket": node.Socket, "capabilities": map[string]bool{"portMappings": true},
		})
		if err != nil {
			return err
		}
		ref, err := confList("ref", map[string]any{
			"type": "bridge", "bridge": "cniref0", "isGateway": true, "ipMasq": false,
			"ipam": map[string]any{"type": "host-local", "dataDir": filepath.Join(tmp, "host-local"),
				"ranges": [][]map[string]string{{{"subnet": "10.200.0.0/16"}}}},
		}, portmapConf())
		if err != nil {
			return err
		}
		chains := []chain{{"weft-cni", weft}, {"bridge+host-local", ref}}

		// A pool of pod namespaces, reused: a DEL leaves the namespace empty again.
		pool := make([]string, 100)
		for i := range pool {
			if pool[i], err = e.newNS(fmt.Sprintf("cni%d", i)); err != nil {
				return err
			}
		}
		rounds, serial := 5, 20
		if o.Quick {
			rounds, serial = 2, 10
		}
		type key struct{ chain, scen, op string }
		lat := map[key][]time.Duration{}
		var seq int
		// batch runs ADD for n pods at once, then DEL for them at once.
		batch := func(c chain, n int, scen string) error {
			rts := make([]*libcni.RuntimeConf, n)
			for i := range n {
				seq++
				rts[i] = &libcni.RuntimeConf{ContainerID: fmt.Sprintf("wbench-%s-%d", e.id, seq), NetNS: nsFile(pool[i]), IfName: "eth0",
					Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "bench"}, {"K8S_POD_NAME", fmt.Sprintf("pod%d", seq)}}}
			}
			for _, op := range []string{"add", "del"} {
				ds := make([]time.Duration, n)
				errs := make([]error, n)
				var wg sync.WaitGroup
				start := make(chan struct{})
				for i := range n {
					wg.Go(func() {
						<-start
						cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
						defer cancel()
						errs[i] = inNS(node.Namespace, func() error {
							t := time.Now()
							var err error
							if op == "add" {
								_, err = cni.AddNetworkList(cctx, c.list, rts[i])
							} else {
								err = cni.DelNetworkList(cctx, c.list, rts[i])
							}
							ds[i] = time.Since(t)
							return err
						})
					})
				}
				close(start)
				wg.Wait()
				for i, err := range errs {
					if err != nil {
						return fmt.Errorf("%s %s of pod %d (%s): %w", c.name, op, i, scen, err)
					}
				}
				k := key{c.name, scen, op}
				lat[k] = append(lat[k], ds...)
			}
			return nil
		}
		for round := range rounds {
			for k := range chains {
				c := chains[(k+round)%len(chains)]
				for range serial {
					if err := batch(c, 1, "serial"); err != nil {
						return err
					}
					// The floor: the same chain's plugins exec'd for VERSION, doing no work.
					t := time.Now()
					err := inNS(node.Namespace, func() error {
						for _, p := range c.list.Plugins {
							if _, err := cni.GetVersionInfo(ctx, p.Network.Type); err != nil {
								return err
							}
						}
						return nil
					})
					if err != nil {
						return fmt.Errorf("VERSION of the %s plugins: %w", c.name, err)
					}
					k := key{c.name, "serial", "exec floor"}
					lat[k] = append(lat[k], time.Since(t))
				}
				for _, n := range []int{10, 100} {
					if err := batch(c, n, fmt.Sprintf("%d parallel", n)); err != nil {
						return err
					}
				}
			}
			progress(o, "cni round %d/%d done", round+1, rounds)
		}
		it := "2 cni"
		p := func(ds []time.Duration) Sample { return summarize(durationsMS(ds)) }
		for _, scen := range []string{"serial", "10 parallel", "100 parallel"} {
			for _, op := range []string{"add", "del"} {
				for _, c := range chains {
					s := p(lat[key{c.name, scen, op}])
					r.add(Figure{Item: it, Name: fmt.Sprintf("%s %s %s p50", c.name, op, scen), Unit: "ms",
						Value: Sample{N: s.N, Median: s.Median, Min: s.Min, Max: s.Max, P99: s.P99}})
					r.add(Figure{Item: it, Name: fmt.Sprintf("%s %s %s p99", c.name, op, scen), Unit: "ms",
						Value: Sample{N: s.N, Median: s.P99, Min: s.Min, Max: s.Max}})
				}
			}
		}
		for _, c := range chains {
			r.add(Figure{Item: it, Name: fmt.Sprintf("%s exec floor: VERSION of each plugin in the chain", c.name), Unit: "ms",
				Value: p(lat[key{c.name, "serial", "exec floor"}]), Note: "process start only, no work; bridge also execs host-local on ADD"})
		}
		w, rf := p(lat[key{"weft-cni", "serial", "add"}]), p(lat[key{"bridge+host-local", "serial", "add"}])
		fl := p(lat[key{"weft-cni", "serial", "exec floor"}])
		r.add(Figure{Item: it, Name: "weft chain exec floor / reference ADD serial p50", Unit: "x", Value: Sample{N: fl.N, Median: fl.Median / rf.Median, Min: fl.Median / rf.Median, Max: fl.Median / rf.Median},
			Note: "the least weft-cni can take (one process start), as a fraction of the reference"})
		r.add(goalMax(Figure{Item: it, Name: "weft / reference, ADD serial p50", Unit: "x", Value: Sample{N: w.N, Median: w.Median / rf.Median, Min: w.Median / rf.Median, Max: w.Median / rf.Median},
			Note: fmt.Sprintf("%.1f ms vs %.1f ms", w.Median, rf.Median)}, 0.5))
		w, rf = p(lat[key{"weft-cni", "100 parallel", "add"}]), p(lat[key{"bridge+host-local", "100 parallel", "add"}])
		r.add(goalMax(Figure{Item: it, Name: "weft / reference, ADD 100 parallel p99", Unit: "x", Value: Sample{N: w.N, Median: w.P99 / rf.P99, Min: w.P99 / rf.P99, Max: w.P99 / rf.P99},
			Note: fmt.Sprintf("%.0f ms vs %.0f ms", w.P99, rf.P99)}, 0.5))
		return nil
	})
}
