package toweragent_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
)

// The wire recorder: what crosses between a Tower agent and a Tower proxy before the SSH keys are
// in use (the HTTP upgrade, the websocket framing, both SSH version strings and KEXINIT
// name-lists), read by a tee in the middle; and what the recording peer (recordServer or
// recordClient) sees after it (authentication, global requests, channels). Recordings are JSON
// files under pkg/tunnel/testdata/tower; tests compare their structure (key exchange is random).

// Recording is one handshake.
type Recording struct {
	Source          string        `json:"source"`
	UpgradeRequest  *HTTPHead     `json:"upgradeRequest,omitempty"`
	UpgradeResponse *HTTPHead     `json:"upgradeResponse,omitempty"`
	ClientFrames    *Frames       `json:"clientFrames,omitempty"`
	ServerFrames    *Frames       `json:"serverFrames,omitempty"`
	ClientBanner    string        `json:"clientBanner,omitempty"`
	ServerBanner    string        `json:"serverBanner,omitempty"`
	ClientKexInit   *KexInit      `json:"clientKexInit,omitempty"`
	ServerKexInit   *KexInit      `json:"serverKexInit,omitempty"`
	HostKeyType     string        `json:"hostKeyType,omitempty"`
	Auth            []AuthAttempt `json:"auth,omitempty"`
	Requests        []GlobalReq   `json:"requests,omitempty"`
	ConfigReply     *Reply        `json:"configReply,omitempty"`
	RefusedReply    *Reply        `json:"refusedReply,omitempty"`
	Channels        []Channel     `json:"channels,omitempty"`
	Notes           []string      `json:"notes,omitempty"`
}

// HTTPHead is a request or response head: the first line's parts and the header names in order
// (values kept only where they are protocol, not per-connection randomness).
type HTTPHead struct {
	Method  string            `json:"method,omitempty"`
	Path    string            `json:"path,omitempty"`
	Status  int               `json:"status,omitempty"`
	Proto   string            `json:"proto"`
	Names   []string          `json:"names"`
	Values  map[string]string `json:"values"`
	RawHead string            `json:"rawHead"`
}

// Frames summarises the websocket frames of one direction up to NEWKEYS.
type Frames struct {
	Opcodes []string `json:"opcodes"` // distinct, in order of appearance
	Masked  bool     `json:"masked"`
	Fin     bool     `json:"allFin"`
}

// KexInit is an SSH_MSG_KEXINIT's name-lists.
type KexInit struct {
	Kex          []string `json:"kex"`
	HostKey      []string `json:"hostKey"`
	CiphersCS    []string `json:"ciphersClientToServer"`
	CiphersSC    []string `json:"ciphersServerToClient"`
	MACsCS       []string `json:"macsClientToServer"`
	MACsSC       []string `json:"macsServerToClient"`
	CompressCS   []string `json:"compressionClientToServer"`
	CompressSC   []string `json:"compressionServerToClient"`
	FirstFollows bool     `json:"firstKexFollows"`
}

// AuthAttempt is one SSH userauth request as the server saw it.
type AuthAttempt struct {
	User   string `json:"user"`
	Method string `json:"method"`
	OK     bool   `json:"ok"`
}

// GlobalReq is an SSH global request; for "config" the payload's JSON keys in order and the
// values that are not secrets.
type GlobalReq struct {
	Type       string            `json:"type"`
	WantReply  bool              `json:"wantReply"`
	PayloadLen int               `json:"payloadLen"`
	ConfigKeys []string          `json:"configKeys,omitempty"`
	Config     map[string]string `json:"config,omitempty"`
}

// Reply is the answer to the config request.
type Reply struct {
	OK      bool   `json:"ok"`
	Payload string `json:"payload"`
}

// Channel is a channel the proxy opened to the agent.
type Channel struct {
	Type     string `json:"type"`
	Extra    string `json:"extra"`
	Accepted bool   `json:"accepted"`
	Dialed   bool   `json:"dialed,omitempty"`
}

// secretKeys are redacted from recorded config payloads.
var secretKeys = map[string]bool{"Token": true, "BearerToken": true, "KeyData": true, "CertData": true, "CAData": true}

// configSummary returns the JSON keys of a config payload in order and its non-secret values.
func configSummary(payload []byte) ([]string, map[string]string) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	var keys []string
	vals := map[string]string{}
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, nil
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return keys, vals
		}
		k, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return keys, vals
		}
		keys = append(keys, k)
		if secretKeys[k] {
			vals[k] = fmt.Sprintf("<redacted, %s>", jsonKind(v))
		} else {
			vals[k] = string(v)
		}
	}
	return keys, vals
}

func jsonKind(v json.RawMessage) string {
	if len(v) > 0 && v[0] == '"' {
		return "string"
	}
	return "other"
}

// tee forwards a TCP connection and parses both directions.
type tee struct {
	mu  sync.Mutex
	rec *Recording
	wg  sync.WaitGroup
}

// teeListen accepts one connection on a new listener and forwards it to target; rec is filled as
// bytes pass.
func teeListen(target string, rec *Recording) (addr string, done func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	t := &tee{rec: rec}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		c, err := ln.Accept()
		_ = ln.Close()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", target)
		if err != nil {
			_ = c.Close()
			return
		}
		var inner sync.WaitGroup
		inner.Add(2)
		go func() { defer inner.Done(); t.pump(c, s, true) }()
		go func() { defer inner.Done(); t.pump(s, c, false) }()
		inner.Wait()
	}()
	return ln.Addr().String(), func() { _ = ln.Close(); t.wg.Wait() }, nil
}

// pump copies src to dst and parses what client (true) or server sent.
func (t *tee) pump(src, dst net.Conn, client bool) {
	pr, pw := io.Pipe()
	go func() {
		t.parse(bufio.NewReader(pr), client)
		_, _ = io.Copy(io.Discard, pr)
	}()
	_, _ = io.Copy(io.MultiWriter(dst, pw), src)
	_ = pw.Close()
	_ = dst.Close()
	_ = src.Close()
}

func readHead(br *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			return b.String(), err
		}
		if line == "\r\n" {
			return b.String(), nil
		}
	}
}

// stableHeaders are recorded with their values; the others by name only.
var stableHeaders = map[string]bool{"Connection": true, "Upgrade": true, "Sec-Websocket-Version": true,
	"Sec-Websocket-Protocol": true, "User-Agent": true}

func parseHead(raw string) *HTTPHead {
	lines := strings.Split(strings.TrimSuffix(raw, "\r\n\r\n"), "\r\n")
	h := &HTTPHead{Values: map[string]string{}}
	first := strings.SplitN(lines[0], " ", 3)
	if strings.HasPrefix(first[0], "HTTP/") {
		h.Proto = first[0]
		if len(first) > 1 {
			_, _ = fmt.Sscan(first[1], &h.Status)
		}
	} else if len(first) == 3 {
		h.Method, h.Path, h.Proto = first[0], first[1], first[2]
	}
	var redacted []string
	redacted = append(redacted, lines[0])
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, ":")
		k = http.CanonicalHeaderKey(strings.TrimSpace(k))
		v = strings.TrimSpace(v)
		h.Names = append(h.Names, k)
		if stableHeaders[k] {
			h.Values[k] = v
			redacted = append(redacted, k+": "+v)
		} else {
			redacted = append(redacted, k+": <"+fmt.Sprint(len(v))+" bytes>")
		}
	}
	h.RawHead = strings.Join(redacted, "\r\n") + "\r\n\r\n"
	return h
}

var opNames = map[byte]string{0: "continuation", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}

// parse reads the HTTP head, then websocket frames, feeding their payload to the SSH parser until
// NEWKEYS.
func (t *tee) parse(br *bufio.Reader, client bool) {
	raw, err := readHead(br)
	if err != nil {
		return
	}
	head := parseHead(raw)
	frames := &Frames{Fin: true}
	t.mu.Lock()
	if client {
		t.rec.UpgradeRequest, t.rec.ClientFrames = head, frames
	} else {
		t.rec.UpgradeResponse, t.rec.ServerFrames = head, frames
	}
	t.mu.Unlock()
	if head.Status != 0 && head.Status != http.StatusSwitchingProtocols {
		return
	}
	sshR, sshW := io.Pipe()
	go t.parseSSH(bufio.NewReader(sshR), client)
	defer sshW.Close()
	for {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return
		}
		fin, op, masked := h[0]&0x80 != 0, h[0]&0x0f, h[1]&0x80 != 0
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(br, b[:]); err != nil {
				return
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(br, b[:]); err != nil {
				return
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		var mask [4]byte
		if masked {
			if _, err := io.ReadFull(br, mask[:]); err != nil {
				return
			}
		}
		if n > 1<<24 {
			return
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(br, p); err != nil {
			return
		}
		if masked {
			for i := range p {
				p[i] ^= mask[i%4]
			}
		}
		t.mu.Lock()
		name := opNames[op]
		if len(frames.Opcodes) == 0 || !contains(frames.Opcodes, name) {
			frames.Opcodes = append(frames.Opcodes, name)
		}
		frames.Masked = masked
		frames.Fin = frames.Fin && fin
		t.mu.Unlock()
		if op == 2 || op == 0 || op == 1 {
			_, _ = sshW.Write(p) // parseSSH drains after NEWKEYS: never blocks for good
		}
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// parseSSH reads the version line and the cleartext packets up to NEWKEYS (21).
func (t *tee) parseSSH(br *bufio.Reader, client bool) {
	defer func() { _, _ = io.Copy(io.Discard, br) }()
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	t.mu.Lock()
	if client {
		t.rec.ClientBanner = strings.TrimRight(line, "\r\n")
	} else {
		t.rec.ServerBanner = strings.TrimRight(line, "\r\n")
	}
	t.mu.Unlock()
	for {
		var h [5]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return
		}
		n, pad := binary.BigEndian.Uint32(h[:4]), uint32(h[4])
		if n < pad+1 || n > 256<<10 {
			return
		}
		body := make([]byte, n-1)
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		payload := body[:n-1-pad]
		if len(payload) == 0 {
			continue
		}
		switch payload[0] {
		case 20:
			if k := parseKexInit(payload); k != nil {
				t.mu.Lock()
				if client {
					t.rec.ClientKexInit = k
				} else {
					t.rec.ServerKexInit = k
				}
				t.mu.Unlock()
			}
		case 21:
			return
		}
	}
}

func parseKexInit(p []byte) *KexInit {
	if len(p) < 17 {
		return nil
	}
	p = p[17:]
	var lists [10][]string
	for i := range lists {
		if len(p) < 4 {
			return nil
		}
		n := binary.BigEndian.Uint32(p)
		if uint32(len(p)-4) < n {
			return nil
		}
		if n > 0 {
			lists[i] = strings.Split(string(p[4:4+n]), ",")
		} else {
			lists[i] = []string{}
		}
		p = p[4+n:]
	}
	k := &KexInit{Kex: lists[0], HostKey: lists[1], CiphersCS: lists[2], CiphersSC: lists[3], MACsCS: lists[4],
		MACsSC: lists[5], CompressCS: lists[6], CompressSC: lists[7]}
	if len(p) > 0 {
		k.FirstFollows = p[0] != 0
	}
	return k
}

// common reports whether two name-lists share a name (SSH negotiation succeeds for that list).
func common(a, b []string) string {
	for _, x := range a {
		if contains(b, x) {
			return x
		}
	}
	return ""
}

// negotiable lists the categories in which client and server share no algorithm.
func negotiable(c, s *KexInit) []string {
	var bad []string
	for name, pair := range map[string][2][]string{
		"kex": {c.Kex, s.Kex}, "hostKey": {c.HostKey, s.HostKey}, "ciphersCS": {c.CiphersCS, s.CiphersCS},
		"ciphersSC": {c.CiphersSC, s.CiphersSC}, "macsCS": {c.MACsCS, s.MACsCS}, "macsSC": {c.MACsSC, s.MACsSC},
		"compressCS": {c.CompressCS, s.CompressCS}, "compressSC": {c.CompressSC, s.CompressSC},
	} {
		if common(pair[0], pair[1]) == "" {
			bad = append(bad, name)
		}
	}
	sort.Strings(bad)
	return bad
}
