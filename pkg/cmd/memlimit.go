package cmd

import (
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"k8s.io/klog/v2"

	"github.com/ks-mc/ks-mc/pkg/manifests"
)

// MemoryLimitEnv is the environment variable the agent and the proxy read their container's memory
// limit from, in bytes (manifests.MemoryLimitEnv: the rendered Deployments set it from limits.memory).
const MemoryLimitEnv = manifests.MemoryLimitEnv

// The Go runtime's soft memory limit (debug.SetMemoryLimit: heap, goroutine stacks and the
// runtime's own structures) is the container's limit less a reserve for what the runtime does not
// count: the binary's mapped text and data (about 26 MiB of the agent's RSS with 10,000 idle
// watches, measured by make bench: RSS 198 MiB with the runtime at its limit), the C stacks of
// threads, the kernel's socket buffers charged to the container. The reserve is memoryReservePercent
// of the limit, at least memoryReserveMin, and never more than half of it.
const (
	memoryReservePercent = 10
	memoryReserveMin     = 32 << 20
)

// memoryLimitFor is the soft limit for a container limit of n bytes.
func memoryLimitFor(n int64) int64 {
	reserve := max(n/100*memoryReservePercent, memoryReserveMin)
	return n - min(reserve, n/2)
}

// applyMemoryLimit gives the Go runtime a soft memory limit of the bytes in $KSMC_MEMORY_LIMIT
// less a reserve (memoryLimitFor), so that the heap is collected before the container reaches its limit instead
// of growing to twice the live heap (GOGC's default). An explicit GOMEMLIMIT wins: the runtime has
// already applied it. It returns the limit it set, 0 when it set none.
func applyMemoryLimit(getenv func(string) string, set func(int64) int64) (int64, error) {
	if getenv("GOMEMLIMIT") != "" {
		return 0, nil
	}
	s := strings.TrimSpace(getenv(MemoryLimitEnv))
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s=%q is not a positive byte count (the container's limits.memory from the downward API)", MemoryLimitEnv, short(s))
	}
	limit := memoryLimitFor(n)
	set(limit)
	return limit, nil
}

// setMemoryLimitFromEnv applies applyMemoryLimit to this process and logs what it set. A value it
// cannot use is logged and ignored: a tuning variable is no reason for the agent or the proxy not
// to run (the runtime's default, GOGC alone, then applies).
func setMemoryLimitFromEnv() {
	limit, err := applyMemoryLimit(os.Getenv, debug.SetMemoryLimit)
	switch {
	case err != nil:
		klog.InfoS("WARNING: no Go memory limit", "err", err.Error())
	case limit > 0:
		klog.InfoS("Go memory limit from the container's limit", "env", MemoryLimitEnv, "bytes", limit)
	}
}

// short quotes at most 32 bytes of a value read from the environment.
func short(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
