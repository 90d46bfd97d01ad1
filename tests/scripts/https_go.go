// An HTTPS server and client on Go's net/http and crypto/tls (pure Go: no OpenSSL anywhere),
// the Go counterpart of https_node.js. Standard library only, one file; built by the tests
// (tests/src/golang.rs) into a static executable named `https_go` that keeps its symbol table,
// which is what the agent probes (`crypto/tls.(*Conn).Read` and `Write`).
//
// Usage:
//
//	https_go server --cert CERT --key KEY [--http1]
//	https_go client --port P --requests N --connections C [--ca CERT] [--http1]
//
// The server listens on 127.0.0.1 (an ephemeral port), prints
// `{"event":"listening","port":P,"pid":PID}` and answers, with keep-alive and Content-Length:
// /api/users/<id> 200 `user <id>\n`, /api/fail 500 `fail\n`, anything else 404 `nope\n`, until
// stdin receives a line or closes; then, once every connection is closed (at most 10 s), prints
// `{"event":"done","served":{"STATUS":count},"protocols":{"HTTP/2.0":count},"connections":K,
// "closed":K}` (K: connections accepted, and closed), then waits for the end of its stdin (both
// programs stay until the test is done with them: see linger). It negotiates
// HTTP/2 through ALPN (`h2`, Go's default); `--http1` offers HTTP/1.1 only.
//
// The client sends N GETs at once, request i on connection i % C of exactly C keep-alive
// connections (one http.Transport each, at most one connection per transport; with HTTP/2 the
// requests of one connection are concurrent streams), cycling /api/users/<i>, /api/fail, /nope;
// it reads every body whole, closes its connections and prints
// `{"event":"done","statuses":{"STATUS":count},"protocols":{..},"connections":K}` (K: distinct
// local ports), then waits for the end of its stdin. It trusts exactly the certificate of
// `--ca` (compared byte for byte: the tests' self-signed certificate names `localhost` in its
// CN only, which Go's verifier no longer accepts), else any. It asks for HTTP/2 (ALPN `h2`, `ForceAttemptHTTP2`); `--http1`
// offers HTTP/1.1 only.
//
// The service name comes from OTEL_SERVICE_NAME, which the agent reads from the environment.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"sync"
	"time"
)

func emit(event string, fields map[string]interface{}) {
	fields["event"] = event
	fields["pid"] = os.Getpid()
	line, err := json.Marshal(fields)
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(append(line, '\n'))
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "https_go: %v\n", err)
	os.Exit(1)
}

// counts is a map of counters safe for concurrent use.
type counts struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counts) add(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[key]++
}

func (c *counts) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

// A non-nil empty TLSNextProto: net/http then neither offers nor accepts `h2`.
func noHTTP2Server() map[string]func(*http.Server, *tls.Conn, http.Handler) {
	return map[string]func(*http.Server, *tls.Conn, http.Handler){}
}

func noHTTP2Client() map[string]func(string, *tls.Conn) http.RoundTripper {
	return map[string]func(string, *tls.Conn) http.RoundTripper{}
}

func server(args []string) {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	certFile := fs.String("cert", "", "certificate (PEM)")
	keyFile := fs.String("key", "", "private key (PEM)")
	http1 := fs.Bool("http1", false, "HTTP/1.1 only (no ALPN h2)")
	fs.Parse(args)
	if *certFile == "" || *keyFile == "" || fs.NArg() != 0 {
		fail(errors.New("server needs --cert and --key"))
	}

	var served, protocols counts
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		status, body := http.StatusNotFound, "nope\n"
		if strings.HasPrefix(r.RequestURI, "/api/users/") {
			status, body = http.StatusOK, "user "+strings.TrimPrefix(r.RequestURI, "/api/users/")+"\n"
		} else if r.RequestURI == "/api/fail" {
			status, body = http.StatusInternalServerError, "fail\n"
		}
		// Counted before the response goes out: once the client has every response, every
		// request is counted.
		served.add(fmt.Sprint(status))
		protocols.add(r.Proto)
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(status)
		io.WriteString(w, body)
	})
	// Connections accepted and closed: a connection is closed once the server has read the
	// client's close (a close_notify alert, then the end of the stream) and closed its end,
	// sending its own close_notify.
	var connsMu sync.Mutex
	accepted, closed := 0, 0
	srv := &http.Server{
		Handler:     handler,
		IdleTimeout: 60 * time.Second,
		ConnState: func(_ net.Conn, state http.ConnState) {
			connsMu.Lock()
			defer connsMu.Unlock()
			switch state {
			case http.StateNew:
				accepted++
			case http.StateClosed, http.StateHijacked:
				closed++
			}
		},
	}
	if *http1 {
		srv.TLSNextProto = noHTTP2Server()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	go func() {
		// ServeTLS adds `h2` to the ALPN protocols unless TLSNextProto is set.
		if err := srv.ServeTLS(ln, *certFile, *keyFile); err != nil && err != http.ErrServerClosed {
			fail(err)
		}
	}()
	emit("listening", map[string]interface{}{"port": ln.Addr().(*net.TCPAddr).Port})

	// A line or the end of stdin stops the server, once every connection the clients closed
	// is closed at this end too (at most 10 s): what each end sends at close is on the wire
	// before the process exits, whenever the line comes.
	stdin := bufio.NewReader(os.Stdin)
	stdin.ReadString('\n')
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		connsMu.Lock()
		open := accepted - closed
		connsMu.Unlock()
		if open == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	connsMu.Lock()
	defer connsMu.Unlock()
	emit("done", map[string]interface{}{
		"served":      served.snapshot(),
		"protocols":   protocols.snapshot(),
		"connections": accepted,
		"closed":      closed,
	})
	linger(stdin)
}

// linger keeps the process until its stdin ends (the test closes it, or kills the process, when
// it is done): the agent names a process from /proc (its OTEL_SERVICE_NAME) when it handles its
// events, and a process already gone by then goes by its executable's name.
func linger(stdin *bufio.Reader) {
	io.Copy(io.Discard, stdin)
	os.Exit(0)
}

// pinned returns a tls.Config check that accepts exactly the certificate in the PEM file.
func pinned(caFile string) func(tls.ConnectionState) error {
	data, err := os.ReadFile(caFile)
	if err != nil {
		fail(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		fail(fmt.Errorf("%s: no PEM certificate", caFile))
	}
	want := block.Bytes
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, want) {
			return fmt.Errorf("the server's certificate is not %s", caFile)
		}
		return nil
	}
}

func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	port := fs.Int("port", 0, "the server's port on 127.0.0.1")
	requests := fs.Int("requests", 0, "requests to send")
	connections := fs.Int("connections", 0, "keep-alive connections to send them on")
	caFile := fs.String("ca", "", "the server's certificate (PEM), trusted alone")
	http1 := fs.Bool("http1", false, "HTTP/1.1 only (no ALPN h2)")
	fs.Parse(args)
	if *port == 0 || *requests <= 0 || *connections <= 0 || fs.NArg() != 0 {
		fail(errors.New("client needs --port, --requests and --connections"))
	}

	// Every TCP connection dialed, to shut its reading side before the end: then neither
	// protocol's reader can read the server's close_notify (which the server sends once it has
	// read the client's), and what the client reads is known: everything but that alert.
	var dialedMu sync.Mutex
	var dialed []*net.TCPConn
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tcp, ok := c.(*net.TCPConn); ok {
			dialedMu.Lock()
			dialed = append(dialed, tcp)
			dialedMu.Unlock()
		}
		return c, err
	}
	transports := make([]*http.Transport, *connections)
	for k := range transports {
		tlsConfig := &tls.Config{ServerName: "localhost", InsecureSkipVerify: true}
		if *caFile != "" {
			tlsConfig.VerifyConnection = pinned(*caFile)
		}
		t := &http.Transport{
			TLSClientConfig:     tlsConfig,
			DialContext:         dial,
			MaxConnsPerHost:     1,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     60 * time.Second,
			ForceAttemptHTTP2:   !*http1,
		}
		if *http1 {
			tlsConfig.NextProtos = []string{"http/1.1"}
			t.TLSNextProto = noHTTP2Client()
		}
		transports[k] = t
	}

	var statuses, protocols counts
	var portsMu sync.Mutex
	ports := map[string]bool{}
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			portsMu.Lock()
			ports[info.Conn.LocalAddr().String()] = true
			portsMu.Unlock()
		},
	}
	paths := func(i int) string {
		return [...]string{fmt.Sprintf("/api/users/%d", i), "/api/fail", "/nope"}[i%3]
	}
	errs := make(chan error, *requests)
	var wg sync.WaitGroup
	for i := 0; i < *requests; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			url := fmt.Sprintf("https://127.0.0.1:%d%s", *port, paths(i))
			ctx := httptrace.WithClientTrace(context.Background(), trace)
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				errs <- err
				return
			}
			resp, err := (&http.Client{Transport: transports[i%*connections]}).Do(req)
			if err != nil {
				errs <- err
				return
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil {
				errs <- err
				return
			}
			statuses.add(fmt.Sprint(resp.StatusCode))
			protocols.add(resp.Proto)
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fail(err)
	}
	for _, c := range dialed {
		c.CloseRead()
	}
	for _, t := range transports {
		t.CloseIdleConnections()
	}
	emit("done", map[string]interface{}{
		"statuses":    statuses.snapshot(),
		"protocols":   protocols.snapshot(),
		"connections": len(ports),
	})
	linger(bufio.NewReader(os.Stdin))
}

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: https_go server|client ..."))
	}
	switch os.Args[1] {
	case "server":
		server(os.Args[2:])
	case "client":
		client(os.Args[2:])
	default:
		fail(fmt.Errorf("unknown role %q", os.Args[1]))
	}
}
