package test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/nbd/tlstest"
)

// tlsDirs are x509 directories in the layout nbdkit, libnbd and qemu read
// (ca-cert.pem, server-cert.pem/-key.pem or client-cert.pem/-key.pem).
type tlsDirs struct {
	server       string // the server's certificate of the cluster CA
	expired      string // an expired server certificate of the same CA
	client       string // the CA and a client certificate (mutual TLS)
	clientNoCert string // only the CA
	otherCA      string // another CA and a client certificate it signed
}

func makeTLSDirs(t testing.TB) tlsDirs {
	t.Helper()
	dir := shortTempDir(t)
	ca, err := tlstest.NewCA("hacs test CA")
	mustOK(t, err)
	other, err := tlstest.NewCA("another CA")
	mustOK(t, err)
	d := tlsDirs{
		server: filepath.Join(dir, "server"), expired: filepath.Join(dir, "expired"), client: filepath.Join(dir, "client"),
		clientNoCert: filepath.Join(dir, "client-nocert"), otherCA: filepath.Join(dir, "other"),
	}
	issue := func(ca *tlstest.CA, name string, o tlstest.Options) tlstest.Pair {
		p, err := ca.Issue(name, o)
		mustOK(t, err)
		return p
	}
	mustOK(t, tlstest.WriteDir(d.server, ca.CertPEM, "server", issue(ca, "server", tlstest.Options{})))
	mustOK(t, tlstest.WriteDir(d.expired, ca.CertPEM, "server", issue(ca, "server", tlstest.Options{Expired: true})))
	mustOK(t, tlstest.WriteDir(d.client, ca.CertPEM, "client", issue(ca, "client", tlstest.Options{Client: true})))
	mustOK(t, tlstest.WriteDir(d.clientNoCert, ca.CertPEM, "client", tlstest.Pair{}))
	mustOK(t, tlstest.WriteDir(d.otherCA, other.CertPEM, "client", issue(other, "intruder", tlstest.Options{Client: true})))
	return d
}

func mustOK(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// nbdsURI is the libnbd URI of a TLS export with an x509 directory.
func nbdsURI(s *server, export, certDir string) string {
	return fmt.Sprintf("nbds://%s/%s?tls-certificates=%s", s.addr, export, certDir)
}

// qemuTLSArgs are qemu-io / qemu-img options opening export over TLS with
// the client credentials in dir.
func qemuTLSArgs(s *server, export, dir string) []string {
	host, port, _ := net.SplitHostPort(s.addr)
	return []string{"--object", "tls-creds-x509,id=tls0,dir=" + dir + ",endpoint=client",
		"--image-opts", fmt.Sprintf("driver=nbd,host=%s,port=%s,export=%s,tls-creds=tls0", host, port, export)}
}

func runQemuIOTLS(t testing.TB, s *server, export, dir string, cmds ...string) result {
	t.Helper()
	args := qemuTLSArgs(s, export, dir)
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return runCmd(t, "qemu-io", args...)
}

// dialTLS opens export with the hacs client over TLS.
func dialTLS(t testing.TB, s *server, export, dir string) (*nbd.Client, error) {
	t.Helper()
	cfg, err := nbd.TLSFilesFromDir(dir, true).ClientConfig("")
	mustOK(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return nbd.Dial(ctx, s.network, s.addr, nbd.ClientOptions{Export: export, TLS: cfg})
}

// The standard clients over x509 TLS: nbdinfo, qemu-io, qemu-img and
// nbdcopy against `hacs serve --tls require`; plaintext refused with the
// TLS-required error; other CA's and expired certificates refused.
func TestTLSServeRealClients(t *testing.T) {
	requireTools(t, "nbdinfo", "nbdcopy", "qemu-io", "qemu-img")
	d := makeTLSDirs(t)
	s := startServe(t, serveOpts{name: "vm1", tcp: true, args: []string{"--tls", "require", "--tls-certificates", d.server}})

	out := nbdinfo(t, nbdsURI(s, "vm1", d.clientNoCert))
	if !out.TLS || !out.Structured || len(out.Exports) != 1 || out.Exports[0].Size != exportSize {
		t.Fatalf("nbdinfo over TLS: %+v", out)
	}

	// qemu-io writes a pattern, qemu-img and nbdcopy read it back.
	if r := runQemuIOTLS(t, s, "vm1", d.clientNoCert, "write -P 0xa5 1M 2M", "flush", "read -P 0xa5 1M 2M"); r.code != 0 || qemuIOFailed(r) {
		t.Fatalf("qemu-io over TLS: %v", r)
	}
	img := filepath.Join(t.TempDir(), "copy.img")
	mustRun(t, "qemu-img", append(append([]string{"convert", "-O", "raw"}, qemuTLSArgs(s, "vm1", d.clientNoCert)...), img)...)
	checkPattern(t, img, 1<<20, 2<<20, 0xa5)
	img2 := filepath.Join(t.TempDir(), "copy2.img")
	mustRun(t, "nbdcopy", "--connections=2", nbdsURI(s, "vm1", d.clientNoCert), img2)
	checkPattern(t, img2, 1<<20, 2<<20, 0xa5)
	mustRun(t, "nbdcopy", "--flush", img2, nbdsURI(s, "vm1", d.clientNoCert))

	// Plaintext: refused with the protocol's TLS-required error, which
	// libnbd reports as ENOTSUP (as against nbdkit --tls=require) and our
	// client by name.
	r := runCmd(t, "nbdinfo", s.uriFor("vm1"))
	if r.code == 0 || !strings.Contains(r.stdout, "without TLS") || !strings.Contains(r.stderr, "Operation not supported") {
		t.Fatalf("plaintext nbdinfo against --tls require: want a TLS-required failure, got %v", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := nbd.Dial(ctx, "tcp", s.addr, nbd.ClientOptions{Export: "vm1"}); err == nil || !strings.Contains(err.Error(), "TLS required") {
		t.Fatalf("plaintext hacs client against --tls require: %v", err)
	}
	r = runQemuIO(t, s.uriFor("vm1"), "read 0 4k")
	if r.code == 0 && !qemuIOFailed(r) {
		t.Fatalf("plaintext qemu-io against --tls require succeeded: %v", r)
	}
	// A server certificate the client's CA did not sign.
	r = runCmd(t, "nbdinfo", nbdsURI(s, "vm1", d.otherCA))
	if r.code == 0 {
		t.Fatalf("nbdinfo trusting another CA connected: %v", r)
	}
	r = runQemuIOTLS(t, s, "vm1", d.otherCA, "read 0 4k")
	if r.code == 0 && !qemuIOFailed(r) {
		t.Fatalf("qemu-io trusting another CA connected: %v", r)
	}
	// An expired server certificate.
	exp := startServe(t, serveOpts{name: "vm1", tcp: true, args: []string{"--tls", "require", "--tls-certificates", d.expired}})
	r = runCmd(t, "nbdinfo", nbdsURI(exp, "vm1", d.clientNoCert))
	if r.code == 0 || !strings.Contains(r.stderr, "certificate verification") {
		t.Fatalf("nbdinfo against an expired certificate: want an expiry failure, got %v", r)
	}
	if _, err := dialTLS(t, exp, "vm1", d.clientNoCert); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("hacs client against an expired certificate: %v", err)
	}
	// The server is still fine: the file has the data nbdcopy wrote back.
	out = nbdinfo(t, nbdsURI(s, "vm1", d.clientNoCert))
	if !out.TLS {
		t.Fatalf("nbdinfo after the refusals: %+v", out)
	}
	for _, want := range []string{"nbd option refused: TLS required", "nbd TLS handshake failed"} {
		if !strings.Contains(s.out.String(), want) {
			t.Errorf("server log lacks %q:\n%s", want, clip(s.out.String()))
		}
	}
}

func checkPattern(t testing.TB, file string, off, n int64, b byte) {
	t.Helper()
	data, err := os.ReadFile(file)
	mustOK(t, err)
	if int64(len(data)) < off+n {
		t.Fatalf("%s: %d bytes, want at least %d", file, len(data), off+n)
	}
	for i, c := range data[off : off+n] {
		if c != b {
			t.Fatalf("%s: byte at %d is %#x, want %#x", file, off+int64(i), c, b)
		}
	}
}

// Mutual TLS: qemu's tls-creds-x509 client certificates; a client without
// one, or with one of another CA, is refused; bad input around STARTTLS
// (garbage instead of a TLS hello, garbage inside TLS, a handshake cut off)
// ends only that connection while a client in transmission keeps working.
func TestTLSServeMutualAndBadInput(t *testing.T) {
	requireTools(t, "nbdinfo", "qemu-io")
	d := makeTLSDirs(t)
	s := startServe(t, serveOpts{name: "vm1", tcp: true, args: []string{"--tls", "on", "--tls-certificates", d.server, "--tls-verify-peer"}})

	good, err := dialTLS(t, s, "vm1", d.client)
	mustOK(t, err)
	defer good.Close()
	if !good.Info().TLS {
		t.Fatal("hacs client: not TLS")
	}
	pattern := bytes.Repeat([]byte{0x3c}, 64<<10)
	mustOK(t, good.WriteAt(pattern, 0, true))
	check := func(when string) {
		t.Helper()
		got := make([]byte, len(pattern))
		if err := good.ReadAt(got, 0); err != nil || !bytes.Equal(got, pattern) {
			t.Fatalf("client in transmission %s: err %v, data equal %v", when, err, bytes.Equal(got, pattern))
		}
	}

	if r := runQemuIOTLS(t, s, "vm1", d.client, "read -P 0x3c 0 64k", "write -P 0x3c 64k 64k"); r.code != 0 || qemuIOFailed(r) {
		t.Fatalf("qemu-io with a client certificate: %v", r)
	}
	if out := nbdinfo(t, nbdsURI(s, "vm1", d.client)); !out.TLS {
		t.Fatalf("nbdinfo with a client certificate: %+v", out)
	}
	if r := runQemuIOTLS(t, s, "vm1", d.clientNoCert, "read 0 4k"); r.code == 0 && !qemuIOFailed(r) {
		t.Fatalf("qemu-io without a client certificate connected: %v", r)
	}
	if r := runCmd(t, "nbdinfo", nbdsURI(s, "vm1", d.clientNoCert)); r.code == 0 {
		t.Fatalf("nbdinfo without a client certificate connected: %v", r)
	}
	check("after refused clients")

	// Client certificate of another CA (the client trusts our server).
	if c, err := dialTLSWith(t, s, d.client, d.otherCA); err == nil {
		c.Close()
		t.Fatal("client certificate of another CA accepted")
	}
	check("after another CA's certificate")

	raw := func() net.Conn {
		nc, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
		mustOK(t, err)
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		var hello [18]byte
		_, err = ioReadFull(nc, hello[:])
		mustOK(t, err)
		msg := binary.BigEndian.AppendUint32(nil, 1)
		msg = binary.BigEndian.AppendUint64(msg, 0x49484156454F5054)
		msg = binary.BigEndian.AppendUint32(msg, 5) // NBD_OPT_STARTTLS
		msg = binary.BigEndian.AppendUint32(msg, 0)
		_, err = nc.Write(msg)
		mustOK(t, err)
		var rep [20]byte
		_, err = ioReadFull(nc, rep[:])
		mustOK(t, err)
		if typ := binary.BigEndian.Uint32(rep[12:]); typ != 1 {
			t.Fatalf("STARTTLS answered %#x, want ACK", typ)
		}
		return nc
	}
	// Garbage where the TLS hello belongs.
	nc := raw()
	nc.Write([]byte("this is not a TLS client hello\r\n\r\n"))
	expectHangup(t, nc)
	check("after garbage instead of a TLS hello")
	// Garbage inside TLS.
	nc = raw()
	cfg, err := nbd.TLSFilesFromDir(d.client, true).ClientConfig("127.0.0.1")
	mustOK(t, err)
	tc := tls.Client(nc, cfg)
	mustOK(t, tc.Handshake())
	tc.Write(bytes.Repeat([]byte{0xff}, 4096))
	expectHangup(t, tc)
	check("after garbage inside TLS")
	// A handshake cut off half way.
	nc = raw()
	nc.Write([]byte{0x16, 0x03, 0x01, 0x01, 0x00, 0x01, 0x00})
	nc.Close()
	check("after a cut-off handshake")

	for _, want := range []string{"nbd TLS handshake failed", "client didn't provide a certificate", "certificate signed by unknown authority", "bad option magic"} {
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(s.out.String(), want) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if !strings.Contains(s.out.String(), want) {
			t.Errorf("server log lacks %q:\n%s", want, clip(s.out.String()))
		}
	}
}

// dialTLSWith trusts the CA of caDir and presents the client certificate
// of certDir.
func dialTLSWith(t testing.TB, s *server, caDir, certDir string) (*nbd.Client, error) {
	t.Helper()
	files := nbd.TLSFilesFromDir(certDir, true)
	files.CA = filepath.Join(caDir, "ca-cert.pem")
	cfg, err := files.ClientConfig("")
	mustOK(t, err)
	cert := cfg.Certificates[0]
	cfg.Certificates = nil
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return nbd.Dial(ctx, s.network, s.addr, nbd.ClientOptions{Export: "vm1", TLS: cfg})
}

func ioReadFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// expectHangup reads until the server closes the connection.
func expectHangup(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("server did not hang up")
			}
			c.Close()
			return
		}
	}
}

// Per-volume TLS policy in a cluster: agents with a certificate for their
// exports; a volume created with --tls required refuses plaintext clients
// (nbdinfo) and serves TLS ones, a volume without it serves both; hacs
// volume attach follows the primary over TLS.
func TestTLSVolumeExports(t *testing.T) {
	requireTools(t, "nbdinfo")
	d := makeTLSDirs(t)
	c := newRMCluster(t, 1, "--export-tls-certificates", d.server)
	credEnv(t, filepath.Join(c.dir, "n1"))
	api := c.ports["n1"][0]
	mustRun(t, hacsBin, "volume", "create", "sec", "--size", "16M", "--replicas", "1", "--tls", "required", "--cluster", api)
	mustRun(t, hacsBin, "volume", "create", "open", "--size", "16M", "--replicas", "1", "--cluster", api)
	if r := runCmd(t, hacsBin, "volume", "create", "bad", "--size", "16M", "--tls", "maybe", "--cluster", api); r.code == 0 || !strings.Contains(r.stderr, "unknown TLS policy") {
		t.Fatalf("volume create --tls maybe: %v", r)
	}
	sec, open := c.waitServed("sec", 0), c.waitServed("open", 0)
	if sec.Spec.TLS != nbd.TLSRequired || !sec.Export.TLS || open.Spec.TLS != nbd.TLSDefault || !open.Export.TLS {
		t.Fatalf("volume info: sec %+v %+v, open %+v %+v", sec.Spec, sec.Export, open.Spec, open.Export)
	}
	addr := sec.Export.Addr
	plain := func(name string) result { return runCmd(t, "nbdinfo", fmt.Sprintf("nbd://%s/%s", addr, name)) }
	tlsURI := func(name string) string {
		return fmt.Sprintf("nbds://%s/%s?tls-certificates=%s", addr, name, d.clientNoCert)
	}
	if r := plain("sec"); r.code == 0 || !strings.Contains(r.stderr, "Operation not supported") {
		t.Fatalf("plaintext nbdinfo on a TLS-required volume: %v", r)
	}
	if r := plain("open"); r.code != 0 {
		t.Fatalf("plaintext nbdinfo on a volume without TLS policy: %v", r)
	}
	for _, name := range []string{"sec", "open"} {
		if out := nbdinfo(t, tlsURI(name)); !out.TLS || out.Exports[0].Size != 16<<20 {
			t.Fatalf("nbdinfo over TLS on %s: %+v", name, out)
		}
	}

	// attach: without TLS options it checks the export's certificate
	// against the cluster CA, which did not sign these agents' export
	// certificates (--export-tls-certificates): refused, saying why; with
	// the right options it serves the volume locally.
	if r := runCmd(t, hacsBin, "volume", "attach", "sec", "--listen", "unix:"+filepath.Join(shortTempDir(t), "x.sock"), "--cluster", api); r.code == 0 || !strings.Contains(r.stderr, "not one of this cluster's") {
		t.Fatalf("attach without TLS options: %v", r)
	}
	checkAttachedWrite(t, api, "sec", []string{"--tls-certificates", d.clientNoCert}, bytes.Repeat([]byte("secret!!"), 512),
		func() (*nbd.Client, error) {
			return dialTLS(t, &server{network: "tcp", addr: addr}, "sec", d.clientNoCert)
		}, "over TLS")
}

// checkAttachedWrite attaches the volume vol of the cluster at api
// locally (hacs volume attach on a Unix socket, with the TLS options
// opts), writes data through it, and reads it back from the primary's
// export with a client from direct, connected how.
func checkAttachedWrite(t testing.TB, api, vol string, opts []string, data []byte, direct func() (*nbd.Client, error), how string) {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), vol+".sock")
	att := startProc(t, true, hacsBin, append(append([]string{"volume", "attach", vol, "--listen", "unix:" + sock}, opts...), "--cluster", api)...)
	att.waitAccepting(t, "unix", sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := nbd.Dial(ctx, "unix", sock, nbd.ClientOptions{Export: vol})
	mustOK(t, err)
	defer cl.Close()
	mustOK(t, cl.WriteAt(data, 8192, true))
	dc, err := direct()
	mustOK(t, err)
	defer dc.Close()
	got := make([]byte, len(data))
	mustOK(t, dc.ReadAt(got, 8192))
	if !bytes.Equal(got, data) {
		t.Fatalf("data written through attach differs when read %s from the primary", how)
	}
}
