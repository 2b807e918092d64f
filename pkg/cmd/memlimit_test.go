package cmd

import (
	"strings"
	"testing"
)

func TestApplyMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		name     string
		env      map[string]string
		want     int64
		wantErr  string
		wantCall bool
	}{
		{name: "unset", env: nil},
		{name: "from the downward API", env: map[string]string{MemoryLimitEnv: "200000000"}, want: 166445568, wantCall: true},
		{name: "512Mi", env: map[string]string{MemoryLimitEnv: "536870912"}, want: 483183822, wantCall: true},
		{name: "a small limit keeps half", env: map[string]string{MemoryLimitEnv: "40000000"}, want: 20000000, wantCall: true},
		{name: "GOMEMLIMIT wins", env: map[string]string{MemoryLimitEnv: "200000000", "GOMEMLIMIT": "50MiB"}},
		{name: "not a number", env: map[string]string{MemoryLimitEnv: "200M"}, wantErr: "not a positive byte count"},
		{name: "zero", env: map[string]string{MemoryLimitEnv: "0"}, wantErr: "not a positive byte count"},
		{name: "negative", env: map[string]string{MemoryLimitEnv: "-1"}, wantErr: "not a positive byte count"},
		{name: "overflow", env: map[string]string{MemoryLimitEnv: "99999999999999999999999"}, wantErr: "not a positive byte count"},
		{name: "too long is cut in the error", env: map[string]string{MemoryLimitEnv: strings.Repeat("x", 4096)}, wantErr: "..."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var called int64 = -1
			got, err := applyMemoryLimit(func(k string) string { return tc.env[k] }, func(n int64) int64 { called = n; return 0 })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				if len(err.Error()) > 200 {
					t.Fatalf("error quotes too much of the value: %d bytes", len(err.Error()))
				}
				if called != -1 {
					t.Fatalf("SetMemoryLimit called with %d on an invalid value", called)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("limit = %d, want %d", got, tc.want)
			}
			if tc.wantCall != (called != -1) || (tc.wantCall && called != tc.want) {
				t.Fatalf("SetMemoryLimit called with %d (want call %v with %d)", called, tc.wantCall, tc.want)
			}
		})
	}
}
