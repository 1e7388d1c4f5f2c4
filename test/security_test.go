package test

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/replica"
)

// TestSecurityLinksAndCLI checks a secure cluster of real agents from the
// outside: its replication port refuses plaintext NBD and a client
// certificate of another cluster, while its own replication keeps working;
// the CLI refuses to talk without the cluster CA, and the API refuses it
// without a token, with a token of too few rights and with an unknown one.
func TestSecurityLinksAndCLI(t *testing.T) {
	c := newRMCluster(t, 2)
	if code, err := c.call("POST", "/v1/volumes", rm.VolumeRequest{Name: "sv", Size: 8 << 20, Replicas: 2}, nil); err != nil || code != 201 {
		t.Fatalf("create: %d %v", code, err)
	}
	v := c.waitServed("sv", 0)
	other := "n1"
	if v.Export.Node == "n1" {
		other = "n2"
	}
	replicaAddr := c.ports[other][3]
	export := replica.ExportName("sv", v.Export.Epoch, mirror.ReplicaSize(8<<20))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// plaintext NBD to the replica server: TLS required
	if cl, err := nbd.Dial(ctx, "tcp", replicaAddr, nbd.ClientOptions{Export: export}); err == nil {
		cl.Close()
		t.Fatal("plaintext NBD client admitted by the replica server")
	} else if !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("plaintext NBD client: unclear refusal: %v", err)
	} else {
		t.Logf("plaintext replica client: %v", err)
	}
	// a certificate of another cluster (the CA of a fresh single-node one)
	o := newAgent(t, "o1")
	o.start("", "", "--voters", "1")
	o.waitRunning()
	p := filepathTLS(o.dir)
	cert, err := tls.LoadX509KeyPair(p[0], p[1])
	if err != nil {
		t.Fatal(err)
	}
	foreign := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}}
	if cl, err := nbd.Dial(ctx, "tcp", replicaAddr, nbd.ClientOptions{Export: export, TLS: foreign}); err == nil {
		cl.Close()
		t.Fatal("a node certificate of another cluster was admitted by the replica server")
	} else {
		t.Logf("foreign replica client: %v", err)
	}
	// the cluster's own replication still works: a write reaches both
	cl := c.dial(v)
	buf := []byte(strings.Repeat("x", 4096))
	if err := cl.WriteAt(buf, 0, true); err != nil {
		t.Fatalf("write after refusals: %v", err)
	}
	cl.Close()

	// the CLI: no CA, no token, too few rights, unknown token
	api := c.ports["n1"][0]
	empty := t.TempDir()
	hacs := func(env []string, args ...string) result {
		t.Helper()
		cmd := append([]string{"volume", "list", "--cluster", api}, args...)
		return runEnv(t, append([]string{"HACS_CONFIG_DIR=" + empty, "HACS_CA_FILE=", "HACS_TOKEN=", "HACS_TOKEN_FILE="}, env...), cmd...)
	}
	ca := "HACS_CA_FILE=" + caFileOf(filepath.Join(c.dir, "n1"))
	if r := hacs(nil); r.code == 0 || !strings.Contains(r.stderr, "no cluster CA certificate") {
		t.Fatalf("CLI without CA: %v", r)
	}
	if r := hacs([]string{ca}); r.code == 0 || !strings.Contains(r.stderr, "needs a token") {
		t.Fatalf("CLI without token: %v", r)
	}
	if r := hacs([]string{ca, "HACS_TOKEN=hacsapi1.ghost.0123456789012345678901234567890123456789012"}); r.code == 0 || !strings.Contains(r.stderr, "unknown or revoked API token") {
		t.Fatalf("CLI with an unknown token: %v", r)
	}
	adm := "HACS_TOKEN_FILE=" + filepath.Join(c.dir, "n1", "admin-token")
	r := runEnv(t, []string{"HACS_CONFIG_DIR=" + empty, ca, adm}, "cluster", "auth", "token", "create", "viewer", "--role", "read-only", "--cluster", api)
	if r.code != 0 {
		t.Fatalf("token create: %v", r)
	}
	viewer := "HACS_TOKEN=" + strings.TrimSpace(r.stdout)
	if r := hacs([]string{ca, viewer}); r.code != 0 || !strings.Contains(r.stdout, "sv") {
		t.Fatalf("read-only list: %v", r)
	}
	r = runEnv(t, []string{"HACS_CONFIG_DIR=" + empty, ca, viewer}, "volume", "standby", "sv", "--cluster", api)
	if r.code == 0 || !strings.Contains(r.stderr, "has the role read-only") {
		t.Fatalf("read-only standby: %v", r)
	}
	t.Logf("read-only standby: %s", strings.TrimSpace(r.stderr))

	// a join token from `hacs cluster token create` admits one node; the
	// replay is refused with a clear message on both sides
	r = runEnv(t, []string{"HACS_CONFIG_DIR=" + empty, ca, viewer}, "cluster", "token", "create", "--cluster", api)
	if r.code == 0 || !strings.Contains(r.stderr, "needs admin") {
		t.Fatalf("join token created with a read-only token: %v", r)
	}
	r = runEnv(t, []string{"HACS_CONFIG_DIR=" + empty, ca, adm}, "cluster", "token", "create", "--ttl", "10m", "--cluster", api)
	if r.code != 0 {
		t.Fatalf("join token create: %v", r)
	}
	jt := strings.TrimSpace(r.stdout)
	x := newAgent(t, "n3")
	x.start(api, jt)
	x.waitRunning()
	y := newAgent(t, "n4")
	if r := y.run(api, jt); r.code == 0 || !strings.Contains(r.stderr, "was already used") {
		t.Fatalf("replayed join token: %v", r)
	} else {
		t.Logf("replayed join token: %s", strings.TrimSpace(r.stderr))
	}

	// an unused join token is listed (never its secret) and revoked by an
	// admin; a node joining with it is refused saying so
	r = runEnv(t, []string{"HACS_CONFIG_DIR=" + empty, ca, adm}, "cluster", "token", "create", "--ttl", "10m", "--uses", "2", "--cluster", api)
	if r.code != 0 {
		t.Fatalf("join token create: %v", r)
	}
	jt2 := strings.TrimSpace(r.stdout)
	r = runEnv(t, []string{"HACS_CONFIG_DIR=" + empty, ca, viewer}, "cluster", "token", "list", "--cluster", api)
	if r.code == 0 || !strings.Contains(r.stderr, "needs admin") {
		t.Fatalf("join tokens listed with a read-only token: %v", r)
	}
	r = runEnv(t, []string{"HACS_CONFIG_DIR=" + empty, ca, adm}, "cluster", "token", "list", "--cluster", api)
	secret := jt2[strings.LastIndex(jt2, ".")+1:]
	if r.code != 0 || strings.Contains(r.stdout, secret) || !strings.Contains(r.stdout, "USES LEFT") {
		t.Fatalf("join token list: %v", r)
	}
	t.Logf("hacs cluster token list:\n%s", r.stdout)
	if r := runEnv(t, []string{"HACS_CONFIG_DIR=" + empty, ca, viewer}, "cluster", "token", "revoke", jt2, "--cluster", api); r.code == 0 || !strings.Contains(r.stderr, "needs admin") {
		t.Fatalf("join token revoked with a read-only token: %v", r)
	}
	if r := runEnv(t, []string{"HACS_CONFIG_DIR=" + empty, ca, adm}, "cluster", "token", "revoke", jt2, "--cluster", api); r.code != 0 || !strings.Contains(r.stdout, "revoked (it had 2 join(s) left") {
		t.Fatalf("join token revoke: %v", r)
	}
	if r := y.run(api, jt2); r.code == 0 || !strings.Contains(r.stderr, "was revoked at") {
		t.Fatalf("join with a revoked token: %v", r)
	} else {
		t.Logf("join with a revoked token: %s", strings.TrimSpace(r.stderr))
	}
}

func filepathTLS(dir string) [2]string {
	return [2]string{filepath.Join(dir, "tls", "node.crt"), filepath.Join(dir, "tls", "node.key")}
}

// runEnv runs hacs with extra environment variables.
func runEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	old := map[string]*string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if prev, ok := os.LookupEnv(k); ok {
			old[k] = &prev
		} else {
			old[k] = nil
		}
		os.Setenv(k, v)
	}
	defer func() {
		for k, v := range old {
			if v == nil {
				os.Unsetenv(k)
			} else {
				os.Setenv(k, *v)
			}
		}
	}()
	return runCmdTimeout(t, 30*time.Second, hacsBin, args...)
}
