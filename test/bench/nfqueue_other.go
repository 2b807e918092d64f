//go:build !(linux && (amd64 || arm64))

package main

import (
	"errors"
	"time"
)

// nfLink needs Linux's NFQUEUE (nfqueue_linux.go).
type nfLink struct{}

func openNFLink(string, uint16, time.Duration, float64, time.Duration) (*nfLink, error) {
	return nil, errors.New("-wan-link=nfqueue needs linux/amd64 or linux/arm64")
}

func (*nfLink) Close() int { return 0 }
