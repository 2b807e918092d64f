package cmd

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"

	"github.com/spf13/pflag"
)

// profileFlags are the hidden --cpuprofile and --memprofile of proxy and agent (make bench
// profiles them): off by default, written to local files only, never served.
type profileFlags struct {
	cpu, mem string
}

func (p *profileFlags) addFlags(fl *pflag.FlagSet) {
	fl.StringVar(&p.cpu, "cpuprofile", "", "Write a CPU profile (pprof) to this file until the process ends")
	fl.StringVar(&p.mem, "memprofile", "", "Write a heap profile (pprof, allocations included) to this file when the process is told to stop (before draining)")
	_ = fl.MarkHidden("cpuprofile")
	_ = fl.MarkHidden("memprofile")
}

// start begins the CPU profile and writes the heap profile as soon as ctx ends (SIGTERM: what is
// open then, watches included, is in it); the returned func stops the CPU profile.
func (p *profileFlags) start(ctx context.Context) (func(), error) {
	var cpuFile *os.File
	if p.cpu != "" {
		f, err := os.Create(p.cpu)
		if err != nil {
			return nil, fmt.Errorf("create --cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("start the CPU profile: %w", err)
		}
		cpuFile = f
	}
	heapDone := make(chan struct{})
	if p.mem != "" {
		path := p.mem
		go func() {
			defer close(heapDone)
			<-ctx.Done()
			if f, err := os.Create(path); err == nil {
				runtime.GC()
				_ = pprof.Lookup("heap").WriteTo(f, 0)
				_ = f.Close()
			}
		}()
	} else {
		close(heapDone)
	}
	return func() {
		if cpuFile != nil {
			pprof.StopCPUProfile()
			_ = cpuFile.Close()
		}
		if ctx.Err() != nil {
			<-heapDone // being written
		}
	}, nil
}
