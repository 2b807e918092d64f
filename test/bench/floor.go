package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"
)

// The floor of "CPU per small GET, proxy + agent": what two processes cost only to pass a small
// request and its answer on, with nothing of a tunnel in them. The bench binary is started twice
// as a byte relay (runRelay: io.Copy both ways per connection), in line between a client and an
// echo server of the bench; the hop between the two relays carries TLS, as the tunnel session
// does. Any design that keeps the proxy and the agent as the two processes a request crosses,
// with the session encrypted, spends at least this; the client's own TLS, the multiplexer and
// HTTP come on top.

const (
	floorRequest = 300  // bytes: a small GET's head
	floorAnswer  = 1000 // bytes: its answer
)

// runRelay is the bench binary as a relay: "-relay tls|plain TARGET[,tls]" listens on a port of
// 127.0.0.1 (with TLS or not), prints its address and relays every connection to TARGET (over
// TLS with ",tls"). It returns only when it fails.
func runRelay(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: -relay tls|plain TARGET[,tls]")
	}
	var cfg *tls.Config
	if args[0] == "tls" {
		ca, err := selfSigned()
		if err != nil {
			return err
		}
		cfg = &tls.Config{Certificates: []tls.Certificate{ca}}
	}
	target, dialTLS := strings.CutSuffix(args[1], ",tls")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if cfg != nil {
				c = tls.Server(c, cfg)
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			if dialTLS {
				up = tls.Client(up, &tls.Config{InsecureSkipVerify: true}) // the bench's own relay
			}
			defer up.Close()
			go func() { _, _ = io.Copy(up, c) }()
			_, _ = io.Copy(c, up)
		}()
	}
}

// startRelay starts the bench binary as a relay and returns its process and address.
func startRelay(args ...string) (*exec.Cmd, string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(exe, append([]string{"-relay"}, args...)...)
	setDeathSignal(cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		return nil, "", fmt.Errorf("relay: %w", err)
	}
	return cmd, strings.TrimSpace(addr), nil
}

// floorRow measures the floor: n sequential round trips through relay 1 → TLS → relay 2, median
// of 3, CPU of both relays per round trip.
func (e *env) floorRow(n int) (row, error) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return row{}, err
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, ans := make([]byte, floorRequest), make([]byte, floorAnswer)
				for {
					if _, err := io.ReadFull(c, req); err != nil {
						return
					}
					if _, err := c.Write(ans); err != nil {
						return
					}
				}
			}()
		}
	}()
	r2, a2, err := startRelay("tls", echo.Addr().String())
	if err != nil {
		return row{}, err
	}
	defer func() { _ = r2.Process.Kill(); _ = r2.Wait() }()
	r1, a1, err := startRelay("plain", a2+",tls")
	if err != nil {
		return row{}, err
	}
	defer func() { _ = r1.Process.Kill(); _ = r1.Wait() }()
	var per []float64
	for rep := 0; rep < repeats; rep++ {
		c, err := net.Dial("tcp", a1)
		if err != nil {
			return row{}, err
		}
		req, ans := make([]byte, floorRequest), make([]byte, floorAnswer)
		round := func() error {
			if _, err := c.Write(req); err != nil {
				return err
			}
			_, err := io.ReadFull(c, ans)
			return err
		}
		if err := round(); err != nil { // connections up before the count starts
			c.Close()
			return row{}, err
		}
		c0 := cpuBoth(r1, r2)
		for i := 0; i < n; i++ {
			if err := round(); err != nil {
				c.Close()
				return row{}, err
			}
		}
		per = append(per, ms2(cpuBoth(r1, r2)-c0)/float64(n))
		c.Close()
	}
	v := median(per)
	return row{section: "LAN", name: "floor: CPU per small round trip, two byte-relay processes, TLS between them", ksmc: fmt.Sprintf("%.3f ms", v),
		value: v, valueStr: fmt.Sprintf("%.3f ms", v), noGoal: true,
		note: fmt.Sprintf("the bench binary as two relays (io.Copy both ways; %d-byte request, %d-byte answer, sequential): the least two processes spend per request before any tunnel work", floorRequest, floorAnswer)}, nil
}

func cpuBoth(a, b *exec.Cmd) time.Duration {
	x, _ := cpuOf(a.Process.Pid)
	y, _ := cpuOf(b.Process.Pid)
	return x + y
}

// selfSigned is a throwaway ECDSA P-256 certificate for the relay's TLS.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ksmc-bench relay"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
