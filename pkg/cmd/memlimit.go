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

// memoryLimitPercent is the share of the container's limit given to the Go runtime as its soft
// memory limit (debug.SetMemoryLimit: heap, goroutine stacks and the runtime's own structures).
// The rest is headroom for what the runtime does not count: the binary's mapped text and data, the
// C stacks of threads, the kernel's socket buffers charged to the container.
const memoryLimitPercent = 90

// applyMemoryLimit gives the Go runtime a soft memory limit of memoryLimitPercent of the bytes in
// $KSMC_MEMORY_LIMIT, so that the heap is collected before the container reaches its limit instead
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
	limit := n / 100 * memoryLimitPercent
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
		klog.InfoS("Go memory limit from the container's limit", "env", MemoryLimitEnv, "bytes", limit, "percent", memoryLimitPercent)
	}
}

// short quotes at most 32 bytes of a value read from the environment.
func short(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
