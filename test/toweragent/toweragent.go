// Package toweragent is a Tower agent for tests: it behaves on the wire as the unchanged `/agent`
// binary of kubesphere/tower:v0.2.1 does, so that ks-mc's proxy, sandbox, e2e tests and benchmarks
// can run "members still on Tower" without Tower's image.
//
// It is written from Tower's source (kubesphere/tower v0.2.1), not copied from it:
//   - cmd/agent/app/options.go: flags, defaults and the proxy address normalisation (a missing port
//     becomes :80 or :443, http becomes ws);
//   - pkg/agent/agent.go: the websocket dial (gorilla, 1 KiB buffers, 45 s handshake timeout,
//     subprotocol kubesphere-v1, HTTP(S)_PROXY honoured), SSH over it as the client (user "",
//     password "", version SSH-kubesphere-v1-client, any host key accepted), the "config" global
//     request, the reconnect loop (jpillora/backoff: 100 ms × 1.4ⁿ up to --max-retry-interval, no
//     jitter; an SSH handshake error or a failed config request ends the loop), the keepalive
//     "ping" global request and the channel handling (each channel's extra data is the host:port the
//     agent dials, whatever it is);
//   - pkg/agent/config.go: the JSON config payload;
//   - pkg/utils/ws_conn.go: one SSH write per binary websocket message, reads concatenate messages;
//   - pkg/utils/ssh.go and pipe.go: a plain TCP dial and a two-way copy per channel.
//
// Where Tower's agent reads the pod's service account (KUBERNETES_SERVICE_HOST/PORT and
// /var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt}), Options.ServiceAccountDir and
// Options.Getenv let a test point it elsewhere; with --kubeconfig it sends the kubeconfig's host, CA
// and client certificate data exactly as Tower does (CA or key *files* are not read: Tower uses
// rest.Config's CAData, CertData and KeyData only).
package toweragent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/crypto/ssh"
	"k8s.io/client-go/tools/clientcmd"
)

// ProtocolVersion is Tower's pkg/version.ProtocolVersion: the websocket subprotocol and the middle
// of both SSH version strings.
const ProtocolVersion = "kubesphere-v1"

// BuildVersion is what Tower's images report as Config.Version (pkg/version.BuildVersion; the
// Dockerfile sets no -ldflags).
const BuildVersion = "0.0.0-rc"

// DefaultServiceAccountDir is where Tower reads the pod's token and CA.
const DefaultServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// ErrNotInCluster is Tower's error when neither --kubeconfig nor KUBERNETES_SERVICE_HOST/PORT is set.
var ErrNotInCluster = errors.New("unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined")

// ErrStopped is returned by Run when the agent's loop ended the way Tower's does (an SSH handshake
// error, a failed config request, --max-retry reached): Tower's process then exits (status 0) and
// the kubelet restarts it.
var ErrStopped = errors.New("tower agent stopped")

// Options are the flags of Tower's /agent (cmd/agent/app/options.go).
type Options struct {
	Name                   string        // --name
	Token                  string        // --token
	Server                 string        // --proxy-server, default http://127.0.0.1:8080
	KeepAlive              time.Duration // --keepalive, default 30s
	MaxRetryCount          int           // --max-retry, 0 means never stop
	MaxRetryInterval       time.Duration // --max-retry-interval, default 2m (below 1s: 5m)
	KubernetesApiserverSvc string        // --kubernetes-service (sent only as given; in-cluster Tower sends the env's host:port)
	KubesphereApiserverSvc string        // --kubesphere-service
	Kubeconfig             string        // --kubeconfig

	// Test hooks (not flags of Tower's agent).
	// ServiceAccountDir replaces /var/run/secrets/kubernetes.io/serviceaccount.
	ServiceAccountDir string
	// Getenv replaces os.Getenv for KUBERNETES_SERVICE_HOST/PORT.
	Getenv func(string) string
	// NetDial replaces the TCP dial of the websocket connection (Tower: net.Dial, through
	// HTTP(S)_PROXY when the environment names one).
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialTarget replaces the TCP dial of each channel's target (Tower: net.Dial("tcp", remote)).
	DialTarget func(network, addr string) (net.Conn, error)
	// Version replaces BuildVersion in the config payload.
	Version string
	// Logf receives log lines (default: the standard logger). Lines never contain the token.
	Logf func(format string, args ...any)
	// OnConnected is called after each accepted config request, OnDisconnected after the session ended.
	OnConnected    func()
	OnDisconnected func(err error)
}

// DefaultOptions returns Tower's flag defaults.
func DefaultOptions() Options {
	return Options{
		Server:                 "http://127.0.0.1:8080",
		KeepAlive:              30 * time.Second,
		MaxRetryInterval:       2 * time.Minute,
		KubernetesApiserverSvc: "kubernetes.default.svc",
		KubesphereApiserverSvc: "ks-apiserver.kubesphere-system.svc",
	}
}

// Config is the JSON payload of the "config" global request (Tower pkg/agent/config.go): field
// names as Go marshals them, []byte fields base64, the four data fields omitted when empty.
type Config struct {
	Version           string
	Name              string
	Token             string
	KubernetesSvcHost string
	KubeSphereSvcHost string
	CertData          []byte `json:",omitempty"`
	KeyData           []byte `json:",omitempty"`
	CAData            []byte `json:",omitempty"`
	BearerToken       []byte `json:",omitempty"`
}

// NormalizeServer applies Tower's Validate to a --proxy-server value: a host without a numeric port
// suffix gets :443 (https, wss) or :80, and the scheme's "http" becomes "ws".
func NormalizeServer(server string) (string, error) {
	if server == "" {
		return "", fmt.Errorf("invalid proxy server url: %s", server)
	}
	u, err := url.Parse(server)
	if err != nil {
		return "", err
	}
	if !regexp.MustCompile(`\d+$`).MatchString(u.Host) {
		if u.Scheme == "https" || u.Scheme == "wss" {
			u.Host += ":443"
		} else {
			u.Host += ":80"
		}
	}
	u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	return u.String(), nil
}

// BuildConfig builds the config payload as Tower's NewAgent does.
func BuildConfig(o Options) (*Config, error) {
	c := &Config{Name: o.Name, Token: o.Token, KubeSphereSvcHost: o.KubesphereApiserverSvc,
		KubernetesSvcHost: o.KubernetesApiserverSvc, Version: o.Version}
	if c.Version == "" {
		c.Version = BuildVersion
	}
	if o.Kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
		if err != nil {
			return nil, err
		}
		c.CAData = rc.CAData
		c.CertData = rc.CertData
		c.KeyData = rc.KeyData
		c.KubernetesSvcHost = strings.TrimPrefix(rc.Host, "https://")
		return c, nil
	}
	getenv := o.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, ErrNotInCluster
	}
	dir := o.ServiceAccountDir
	if dir == "" {
		dir = DefaultServiceAccountDir
	}
	token, err := os.ReadFile(filepath.Join(dir, "token"))
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	c.CAData = ca
	c.BearerToken = token
	c.KubernetesSvcHost = fmt.Sprintf("%s:%s", host, port)
	return c, nil
}

// agent is one running Tower agent.
type agent struct {
	o    Options
	url  string
	conf []byte
	ssh  *ssh.ClientConfig
	logf func(string, ...any)

	mu   sync.Mutex
	conn ssh.Conn
}

// Run behaves as Tower's agent until ctx is done (then it returns nil) or until its loop ends as
// Tower's does (it returns an error wrapping ErrStopped).
func Run(ctx context.Context, o Options) error {
	server, err := NormalizeServer(o.Server)
	if err != nil {
		return err
	}
	if o.MaxRetryInterval < time.Second {
		o.MaxRetryInterval = 5 * time.Minute
	}
	conf, err := BuildConfig(o)
	if err != nil {
		return err
	}
	payload, err := json.Marshal(conf)
	if err != nil {
		return err
	}
	a := &agent{o: o, url: server, conf: payload, logf: o.Logf}
	if a.logf == nil {
		a.logf = log.Printf
	}
	a.ssh = &ssh.ClientConfig{
		User:            "",
		Auth:            []ssh.AuthMethod{ssh.Password("")},
		ClientVersion:   "SSH-" + ProtocolVersion + "-client",
		HostKeyCallback: func(string, net.Addr, ssh.PublicKey) error { return nil }, // Tower accepts any host key
		Timeout:         30 * time.Second,
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		a.closeConn()
	}()
	if o.KeepAlive > 0 {
		go a.keepAliveLoop(ctx)
	}
	err = a.connectionLoop(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (a *agent) current() ssh.Conn {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.conn
}

func (a *agent) setConn(c ssh.Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.conn = c
}

func (a *agent) closeConn() {
	if c := a.current(); c != nil {
		_ = c.Close()
	}
}

// keepAliveLoop sends Tower's "ping" (want-reply, no timeout: a half-open proxy blocks it).
func (a *agent) keepAliveLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(a.o.KeepAlive):
		}
		if c := a.current(); c != nil {
			_, _, _ = c.SendRequest("ping", true, nil)
		}
	}
}

// backoff is jpillora/backoff v1.0.0 as Tower configures it: Min 100 ms, Factor 1.4, no jitter.
type backoff struct {
	attempt float64
	max     time.Duration
}

func (b *backoff) duration() time.Duration {
	d := float64(100*time.Millisecond) * math.Pow(1.4, b.attempt)
	b.attempt++
	if d > float64(b.max) {
		return b.max
	}
	return time.Duration(d)
}

func (a *agent) connectionLoop(ctx context.Context) error {
	var connErr error
	b := &backoff{max: a.o.MaxRetryInterval}
	for ctx.Err() == nil {
		if connErr != nil {
			attempt := int(b.attempt)
			d := b.duration()
			msg := fmt.Sprintf("Connection error: %s", connErr)
			if attempt > 0 {
				msg += fmt.Sprintf(" (Attempt: %d", attempt)
				if a.o.MaxRetryCount > 0 {
					msg += fmt.Sprintf("/%d", a.o.MaxRetryCount)
				}
				msg += ")"
			}
			a.logf("%s", msg)
			if a.o.MaxRetryCount > 0 && attempt >= a.o.MaxRetryCount {
				return fmt.Errorf("%w: %d retries: %v", ErrStopped, attempt, connErr)
			}
			a.logf("Retrying in %s...", d)
			connErr = nil
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d):
			}
		}
		dialer := websocket.Dialer{
			ReadBufferSize:   1024,
			WriteBufferSize:  1024,
			HandshakeTimeout: 45 * time.Second,
			Subprotocols:     []string{ProtocolVersion},
			Proxy:            http.ProxyFromEnvironment,
			NetDialContext:   a.o.NetDial,
		}
		wsConn, _, err := dialer.DialContext(ctx, a.url, http.Header{})
		if err != nil {
			connErr = err
			continue
		}
		conn := newWSConn(wsConn)
		sshConn, chans, reqs, err := ssh.NewClientConn(conn, "", a.ssh)
		if err != nil {
			_ = conn.Close()
			if strings.Contains(err.Error(), "unable to authenticate") {
				a.logf("Authentication failed %v", err)
			} else {
				a.logf("%v", err)
			}
			return fmt.Errorf("%w: ssh handshake: %v", ErrStopped, err)
		}
		t0 := time.Now()
		// Tower ignores the boolean of the reply: only a non-empty payload is a refusal.
		_, configErr, err := sshConn.SendRequest("config", true, a.conf)
		if err != nil {
			_ = sshConn.Close()
			a.logf("Config verification failed %v", err)
			return fmt.Errorf("%w: config request: %v", ErrStopped, err)
		}
		if len(configErr) > 0 {
			// Tower does not close the refused connection: the proxy must (ks-mc's does).
			connErr = errors.New(string(configErr))
			continue
		}
		a.logf("Connected (Latency %s)", time.Since(t0))
		b.attempt = 0
		a.setConn(sshConn)
		if ctx.Err() != nil {
			_ = sshConn.Close()
		}
		if a.o.OnConnected != nil {
			a.o.OnConnected()
		}
		go ssh.DiscardRequests(reqs)
		go a.connectStreams(chans)
		err = sshConn.Wait()
		a.setConn(nil)
		if a.o.OnDisconnected != nil {
			a.o.OnDisconnected(err)
		}
		if err != nil && err != io.EOF {
			connErr = err
			continue
		}
		a.logf("Disconnected")
	}
	return nil
}

// connectStreams dials, for every channel the proxy opens, the host:port its extra data names.
func (a *agent) connectStreams(chans <-chan ssh.NewChannel) {
	for ch := range chans {
		remote := string(ch.ExtraData())
		stream, reqs, err := ch.Accept()
		if err != nil {
			a.logf("Failed to accept stream %v", err)
			continue
		}
		go ssh.DiscardRequests(reqs)
		go a.handleTCPStream(stream, remote)
	}
}

func (a *agent) handleTCPStream(src io.ReadWriteCloser, remote string) {
	dial := a.o.DialTarget
	if dial == nil {
		dial = net.Dial
	}
	dst, err := dial("tcp", remote)
	if err != nil {
		a.logf("remote failed %v", err)
		_ = src.Close()
		return
	}
	pipe(src, dst)
}

// pipe copies both ways and closes both ends when either direction ends.
func pipe(src io.ReadWriteCloser, dst io.ReadWriteCloser) {
	var wg sync.WaitGroup
	var once sync.Once
	closeBoth := func() {
		_ = src.Close()
		_ = dst.Close()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(src, dst)
		once.Do(closeBoth)
	}()
	go func() {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		once.Do(closeBoth)
	}()
	wg.Wait()
}

// wsConn is a net.Conn over a websocket: every Write is one binary message; Read returns message
// bytes in order, keeping what does not fit for the next Read (Tower pkg/utils/ws_conn.go).
type wsConn struct {
	*websocket.Conn
	buf []byte
}

func newWSConn(c *websocket.Conn) net.Conn { return &wsConn{Conn: c} }

func (c *wsConn) Read(p []byte) (int, error) {
	if len(c.buf) == 0 {
		_, msg, err := c.ReadMessage()
		if err != nil {
			return 0, err
		}
		c.buf = msg
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}
