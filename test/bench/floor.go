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
// request and its answer on, with nothing of a tunnel in them. The bench binary is started as a
// byte relay where the proxy runs and as one where the agent runs (the member's network
// namespace), and as an echo server beside the member's kube-apiserver; each relay copies both
// ways (io.Copy per direction), and the hop between them carries TLS, as the tunnel does. Any
// design that keeps the proxy and the agent as the two processes a request crosses spends at
// least this per request on this machine; TLS on the other hops, HTTP/2 framing and HPACK, and a
// multiplexer come on top. The second floor (allTLS) has TLS on every hop, as the tunnel must: the
// client's to the proxy's listener, the tunnel's, and the agent's to the kube-apiserver.

const (
	floorRequest = 300  // bytes: a small GET's head
	floorAnswer  = 1000 // bytes: its answer
)

// runHelper is the bench binary as the floor's relay or echo server:
//
//	-relay IP tls|plain TARGET[,tls]   listen on IP (with TLS or not), relay to TARGET (over TLS with ",tls")
//	-echo IP [tls]                     answer every floorRequest bytes with floorAnswer bytes (over TLS)
//
// It prints its address and returns only when it fails.
func runHelper(args []string) error {
	if (len(args) == 2 || len(args) == 3 && args[2] == "tls") && args[0] == "-echo" {
		ln, err := net.Listen("tcp", net.JoinHostPort(args[1], "0"))
		if err != nil {
			return err
		}
		if len(args) == 3 {
			cert, err := selfSigned()
			if err != nil {
				return err
			}
			ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
		}
		fmt.Println(ln.Addr().String())
		return serveEcho(ln)
	}
	if len(args) != 4 || args[0] != "-relay" {
		return fmt.Errorf("usage: -relay IP tls|plain TARGET[,tls] | -echo IP [tls]")
	}
	var cfg *tls.Config
	if args[2] == "tls" {
		cert, err := selfSigned()
		if err != nil {
			return err
		}
		cfg = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	target, dialTLS := strings.CutSuffix(args[3], ",tls")
	ln, err := net.Listen("tcp", net.JoinHostPort(args[1], "0"))
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	return acceptEach(ln, func(c net.Conn) {
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
	})
}

func serveEcho(ln net.Listener) error {
	return acceptEach(ln, func(c net.Conn) {
		req, ans := make([]byte, floorRequest), make([]byte, floorAnswer)
		for {
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			if _, err := c.Write(ans); err != nil {
				return
			}
		}
	})
}

// acceptEach serves every connection of ln with serve in a goroutine of its own, then closes it.
func acceptEach(ln net.Listener, serve func(net.Conn)) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			serve(c)
		}()
	}
}

// startHelper starts the bench binary as a floor helper, in network namespace netns unless it is
// empty, and returns its process and address.
func startHelper(netns string, args ...string) (*exec.Cmd, string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	argv := append([]string{exe}, args...)
	if netns != "" {
		argv = append([]string{"ip", "netns", "exec", netns}, argv...) // ip execs it: same pid
	}
	cmd := exec.Command(argv[0], argv[1:]...)
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
		return nil, "", fmt.Errorf("floor helper %v: %w", args, err)
	}
	return cmd, strings.TrimSpace(addr), nil
}

// floorRow measures the floor: n sequential round trips, median of 3, CPU of both relays per
// round trip; with allTLS every hop carries TLS. Without a sandbox (tests) everything runs on
// 127.0.0.1 here.
func (e *env) floorRow(n int, allTLS bool) (row, error) {
	rootIP, memberIP := e.rootIP, e.memberIP
	if rootIP == "" {
		rootIP, memberIP = "127.0.0.1", "127.0.0.1"
	}
	var cmds []*exec.Cmd
	defer func() {
		for _, c := range cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}()
	start := func(netns string, args ...string) (string, error) {
		c, addr, err := startHelper(netns, args...)
		if err == nil {
			cmds = append(cmds, c)
		}
		return addr, err
	}
	echoArgs, echoTarget, listen := []string{"-echo", memberIP}, "", "plain"
	if allTLS {
		echoArgs, echoTarget, listen = append(echoArgs, "tls"), ",tls", "tls"
	}
	echo, err := start(e.memberNetns, echoArgs...)
	if err != nil {
		return row{}, err
	}
	agentSide, err := start(e.memberNetns, "-relay", memberIP, "tls", echo+echoTarget)
	if err != nil {
		return row{}, err
	}
	proxySide, err := start("", "-relay", rootIP, listen, agentSide+",tls")
	if err != nil {
		return row{}, err
	}
	relays := cmds[1:]
	var per []float64
	for rep := 0; rep < repeats; rep++ {
		c, err := net.Dial("tcp", proxySide)
		if err != nil {
			return row{}, err
		}
		if allTLS {
			c = tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // the bench's own relay
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
		c0 := cpuOfCmds(relays)
		for i := 0; i < n; i++ {
			if err := round(); err != nil {
				c.Close()
				return row{}, err
			}
		}
		per = append(per, ms2(cpuOfCmds(relays)-c0)/float64(n))
		c.Close()
	}
	v := median(per)
	if allTLS {
		return row{section: "LAN", name: "floor with TLS on every hop: client → relay → relay → echo, as client → proxy → agent → kube-apiserver",
			ksmc: fmt.Sprintf("%.3f ms", v), value: v, valueStr: fmt.Sprintf("%.3f ms", v), noGoal: true,
			note: "the floor above with TLS on the client's hop and the echo server's too, as the tunnel has them (the listener's TLS, the kube-apiserver's): the least a design that keeps TLS end to end on each hop spends"}, nil
	}
	return row{section: "LAN", name: "floor: CPU per small round trip, two byte-relay processes where proxy and agent run, TLS between them",
		ksmc: fmt.Sprintf("%.3f ms", v), value: v, valueStr: fmt.Sprintf("%.3f ms", v), noGoal: true,
		note: fmt.Sprintf("the bench binary as two relays (io.Copy both ways; %d-byte request, %d-byte answer, sequential) and an echo server in the member's namespace: the least two processes spend per request before any tunnel work", floorRequest, floorAnswer)}, nil
}

func cpuOfCmds(cmds []*exec.Cmd) time.Duration {
	var d time.Duration
	for _, c := range cmds {
		x, _ := cpuOf(c.Process.Pid)
		d += x
	}
	return d
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
