package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cdpruntime "github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
)

// chromiumPath is Debian's chromium (scripts/install-deps.sh installs it).
const chromiumPath = "/usr/bin/chromium"

// artifactDir is where tests leave files for people to look at
// ($HACS_ARTIFACTS, else test/artifacts, which git ignores).
func artifactDir(t *testing.T) string {
	dir := os.Getenv("HACS_ARTIFACTS")
	if dir == "" {
		dir = "artifacts"
	}
	dir, _ = filepath.Abs(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artifact dir: %v", err)
	}
	return dir
}

// newBrowser starts headless chromium with a fresh profile and the flags
// that keep it off the network (on a closed network its background
// connections are refused and slow it down).
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath
	if _, err := os.Stat(path); err != nil {
		p, lerr := exec.LookPath("chromium")
		if lerr != nil {
			t.Fatalf("chromium not found (%v): install the Debian package chromium (scripts/install-deps.sh, run by make test, does)", err)
		}
		path = p
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // tests run as root
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("mute-audio", true),
		// the agents' certificates come from the cluster's own CA
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.WindowSize(1440, 1000),
		chromedp.WSURLReadTimeout(60 * time.Second),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	// The first run starts the browser, which lives as long as ctx: no
	// timeout on it (WSURLReadTimeout bounds the start).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return ctx
}

// browse runs actions with a time limit.
func browse(t *testing.T, ctx context.Context, limit time.Duration, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	if err := chromedp.Do(cctx, actions...); err != nil {
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		body, _ := chromedp.Run(tctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		t.Fatalf("%s: %v\npage text:\n%s", what, err, clip(body))
	}
}

// eval evaluates a JavaScript expression.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(cctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// waitJS polls a JavaScript expression until it is true (the caller's
// context limits the wait).
func waitJS(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(0))
}

// click clicks the element of a CSS selector with the mouse. The page
// redraws a table when its data changes: a click that finds its element
// replaced between the query and the click is tried again.
func click(sel string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		var err error
		for range 10 {
			if _, err = chromedp.Click(chromedp.CSS(sel))(ctx, t); err == nil || ctx.Err() != nil {
				return err
			}
			time.Sleep(50 * time.Millisecond)
		}
		return err
	})
}

// TestDashboardBrowser loads the web dashboard of a live 3-agent cluster in
// headless chromium, checks what it shows, puts the primary's node in
// standby with the page's button, and sees the page follow the failover to
// the new primary without a reload. It also checks the API token field
// with the agents' authentication (401 without a token, 403 for a
// read-only token's action), and saves screenshots as artefacts.
func TestDashboardBrowser(t *testing.T) {
	ctx := newBrowser(t)
	// every uncaught JavaScript error of the page fails the test
	var jsMu sync.Mutex
	var jsErrors []string
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*cdpruntime.EventExceptionThrown); ok && e.ExceptionDetails != nil {
			d := e.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			jsMu.Lock()
			jsErrors = append(jsErrors, fmt.Sprintf("%s:%d: %s", d.URL, d.LineNumber+1, msg))
			jsMu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		jsMu.Lock()
		defer jsMu.Unlock()
		for _, e := range jsErrors {
			t.Errorf("JavaScript error in the page: %s", e)
		}
	})
	c := newRMCluster(t, 3)
	for _, v := range []rm.VolumeRequest{{Name: "vol", Size: 32 << 20, Replicas: 3}, {Name: "db", Size: 16 << 20, Replicas: 2}} {
		if code, err := c.call("POST", "/v1/volumes", v, nil); err != nil || code != 201 {
			t.Fatalf("create %s: %d %v", v.Name, code, err)
		}
	}
	// a resource (OCF Dummy, from Debian's pacemaker-resource-agents)
	if code, err := c.call("POST", "/v1/resources", map[string]any{"name": "dummy1", "type": "ocf:pacemaker:Dummy",
		"ops": map[string]any{"monitor_interval": "1s"}}, nil); err != nil || code != 201 {
		t.Fatalf("create resource: %d %v", code, err)
	}
	v := c.waitServed("vol", 0)
	c.waitServed("db", 0)
	first := v.Export.Node
	// the page is loaded from another agent than the primary's
	viewer := "n1"
	if viewer == first {
		viewer = "n2"
	}
	arts := artifactDir(t)

	// The API wants a token (a secure cluster): without one, the page
	// shows the agent's 401; with the admin token typed into its field it
	// shows the cluster (the token kept in the tab's sessionStorage).
	admin, err := os.ReadFile(filepath.Join(c.dir, "n1", cluster.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	browse(t, ctx, 30*time.Second, "the page without a token",
		chromedp.Navigate(c.api(viewer)+"/"),
		waitJS(`(() => { const b = document.getElementById("banner");
			return !b.hidden && b.dataset.status === "401" && b.textContent.includes("Not authenticated (401)") })()`),
		waitJS(`document.getElementById("tokenform").classList.contains("needed")`),
		waitJS(`document.querySelector("#nodes tbody").textContent.includes("not authorized")`),
	)
	screenshot(t, ctx, filepath.Join(arts, "dashboard-401.png"))
	useToken := func(tok string) chromedp.Action[chromedp.Void] {
		return chromedp.Steps(
			chromedp.Evaluate[chromedp.Void](`document.getElementById("token").value = ""`),
			chromedp.SendKeys(chromedp.CSS(`#token`), tok),
			click(`#tokenform button[type="submit"]`))
	}
	browse(t, ctx, 30*time.Second, "giving the page the admin token",
		useToken(strings.TrimSpace(string(admin))),
		waitJS(`document.getElementById("banner").hidden`),
	)
	if got := eval[string](t, ctx, `sessionStorage.getItem("hacs.token")`); got != strings.TrimSpace(string(admin)) {
		t.Errorf("sessionStorage holds %q", got)
	}
	browse(t, ctx, 30*time.Second, "loading the dashboard",
		chromedp.Navigate(c.api(viewer)+"/"),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-node="n3"]`)),
		waitJS(`document.querySelectorAll('tr[data-node][data-state="online"]').length === 3`),
		waitJS(fmt.Sprintf(`(() => { const r = document.querySelector('tr[data-volume="vol"]');
			return r && r.dataset.primary === %q && r.dataset.health === "ok" &&
				r.querySelectorAll('[data-replica-state="in-sync"]').length === 3 })()`, first)),
		waitJS(`!!document.querySelector('tr[data-volume="db"]')`),
		waitJS(`(() => { const r = document.querySelector('tr[data-resource="dummy1"]');
			return !document.getElementById("resources-section").hidden && r && r.dataset.health === "running" })()`),
		waitJS(`document.getElementById("live").textContent === "live"`),
		waitJS(`document.querySelectorAll('#events tbody tr[data-kind]').length > 0`),
	)
	dc := eval[string](t, ctx, `document.getElementById("dc-name").textContent`)
	url := eval[string](t, ctx, `location.href`)
	if !strings.HasSuffix(url, "/ui/") || dc == "" || dc == "none" {
		t.Fatalf("page %s shows DC %q", url, dc)
	}
	// the DC exports the resource's state as the page shows it
	c.waitFor("the resource's metrics on the DC", 10*time.Second, func() bool {
		m := scrape(t, c.hc(), c.api(dc))
		return m[`hacs_cluster_resource_health{health="running",resource="dummy1"}`] == 1 &&
			m[`hacs_cluster_resource_health{health="failed",resource="dummy1"}`] == 0 && m[`hacs_cluster_resource_running_nodes{resource="dummy1"}`] == 1
	})
	screenshot(t, ctx, filepath.Join(arts, "dashboard-before-failover.png"))

	// Standby of the primary's node with the page's button: the page
	// follows the failover without a reload.
	var clicked, shown time.Time
	browse(t, ctx, 60*time.Second, "standby of the primary's node and the failover",
		chromedp.Evaluate[chromedp.Void](`window.notReloaded = true`),
		click(fmt.Sprintf(`tr[data-node=%q] button[data-act="node-standby"]`, first)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm-ok`)),
		click(`#confirm-ok`),
		chromedp.Func(func(context.Context, *chromedp.Target) error { clicked = time.Now(); return nil }),
		waitJS(fmt.Sprintf(`document.querySelector('tr[data-node=%q]').dataset.state === "standby"`, first)),
		waitJS(fmt.Sprintf(`(() => { const r = document.querySelector('tr[data-volume="vol"]');
			return r && r.dataset.primary !== "" && r.dataset.primary !== %q && r.dataset.health === "ok" })()`, first)),
		chromedp.Func(func(context.Context, *chromedp.Target) error { shown = time.Now(); return nil }),
		waitJS(`window.notReloaded === true`),
		waitJS(`[...document.querySelectorAll('#events tbody tr[data-kind="node-standby"]')].length > 0`),
	)
	second := eval[string](t, ctx, `document.querySelector('tr[data-volume="vol"]').dataset.primary`)
	v2 := c.volume("vol")
	if v2.Export == nil || v2.Export.Node != second {
		t.Errorf("the page shows primary %q, the API %+v", second, v2.Export)
	}
	t.Logf("the page followed the failover %s -> %s (epoch %d -> %d): the new primary shown %v after the confirming click",
		first, second, v.Export.Epoch, v2.State.Epoch, shown.Sub(clicked).Round(time.Millisecond))
	screenshot(t, ctx, filepath.Join(arts, "dashboard-after-failover.png"))

	// The node back to active, with the page.
	browse(t, ctx, 30*time.Second, "node active again",
		click(fmt.Sprintf(`tr[data-node=%q] button[data-act="node-active"]`, first)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm-ok`)),
		click(`#confirm-ok`),
		waitJS(fmt.Sprintf(`document.querySelector('tr[data-node=%q]').dataset.state === "online"`, first)),
	)

	// Volume standby and active with the page.
	browse(t, ctx, 30*time.Second, "volume standby and active",
		click(`tr[data-volume="db"] button[data-act="vol-standby"]`),
		chromedp.WaitVisible(chromedp.CSS(`#confirm-ok`)),
		click(`#confirm-ok`),
		waitJS(`document.querySelector('tr[data-volume="db"]').dataset.health === "stopped"`),
		click(`tr[data-volume="db"] button[data-act="vol-active"]`),
		chromedp.WaitVisible(chromedp.CSS(`#confirm-ok`)),
		click(`#confirm-ok`),
		waitJS(`document.querySelector('tr[data-volume="db"]').dataset.health === "ok"`),
	)

	// A snapshot with the page (POST /v1/volumes/vol/snapshots); a bad name
	// gets the agent's error, with its status, shown.
	snapshot := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Steps(
			click(`tr[data-volume="vol"] button[data-act="vol-snapshot"]`),
			chromedp.WaitVisible(chromedp.CSS(`#confirm-input`)),
			chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.getElementById("confirm-input").value = %q`, name)),
			click(`#confirm-ok`))
	}
	browse(t, ctx, 30*time.Second, "snapshot with the page",
		snapshot("dash-snap"),
		waitJS(`(() => { const t = document.getElementById("toast");
			return !t.hidden && t.textContent === "volume vol: snapshot dash-snap created" })()`),
		waitJS(`[...document.querySelectorAll('#events tbody tr[data-kind="snapshot-created"]')].length > 0`),
		snapshot("bad name!"),
		waitJS(`(() => { const t = document.getElementById("toast");
			return !t.hidden && t.classList.contains("error") && t.textContent.startsWith("volume vol: 400 ") })()`),
	)
	var snaps []rm.SnapshotInfo
	if code, err := c.call("GET", "/v1/volumes/vol/snapshots", nil, &snaps); err != nil || code != 200 || len(snaps) != 1 || snaps[0].Name != "dash-snap" {
		t.Fatalf("snapshots after the page made one: %d %v %+v", code, err, snaps)
	}
	t.Logf("snapshot made by the page: %s on %v by %q", snaps[0].Name, snaps[0].Replicas, snaps[0].By)

	testCloneProgress(t, c, viewer)

	// A read-only token sees everything, and its actions are refused by
	// the agent: the 403 is shown.
	var ro struct {
		Token string `json:"token"`
	}
	if code, err := c.call("POST", "/v1/auth/tokens", map[string]string{"name": "watcher", "role": "read-only"}, &ro); err != nil || code != 200 || ro.Token == "" {
		t.Fatalf("read-only token: %d %v", code, err)
	}
	browse(t, ctx, 30*time.Second, "a read-only token",
		useToken(ro.Token),
		waitJS(`document.getElementById("banner").hidden`),
		waitJS(`document.querySelectorAll('tr[data-node][data-state="online"]').length === 3`),
		waitJS(`document.getElementById("live").textContent === "live"`),
		click(`tr[data-volume="db"] button[data-act="vol-standby"]`),
		chromedp.WaitVisible(chromedp.CSS(`#confirm-ok`)),
		click(`#confirm-ok`),
		waitJS(`(() => { const t = document.getElementById("toast");
			return !t.hidden && t.classList.contains("error") && t.textContent.startsWith("volume db: Forbidden (403)") })()`),
	)
	screenshot(t, ctx, filepath.Join(arts, "dashboard-403.png"))
	if v := c.volume("db"); v.Spec.Stopped {
		t.Error("a read-only token stopped a volume")
	}
	// The token cleared: nothing of the cluster is shown any more.
	browse(t, ctx, 30*time.Second, "the token cleared",
		click(`#tokenclear`),
		waitJS(`(() => { const b = document.getElementById("banner");
			return !b.hidden && b.dataset.status === "401" && document.querySelector("#nodes tbody").textContent.includes("not authorized") &&
				!document.querySelector('tr[data-volume]') && !document.querySelector('#events tr[data-kind]') })()`),
	)
	if got := eval[string](t, ctx, `sessionStorage.getItem("hacs.token") || ""`); got != "" {
		t.Errorf("sessionStorage still holds %q", got)
	}
	browse(t, ctx, 10*time.Second, "leaving the page", chromedp.Navigate("about:blank"))
}

func screenshot(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	time.Sleep(600 * time.Millisecond) // let the bars' transitions end
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(cctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// testCloneProgress clones a volume full of data with the real CLI while
// polling GET /v1/clones/NEW on the agent the CLI asks (it coordinates the
// copies): the progress only goes forward, within the three copies' total,
// and ends.
func testCloneProgress(t *testing.T, c *rmCluster, agentName string) {
	v := c.volume("vol")
	cl := c.dial(v)
	buf := bytes.Repeat([]byte("clone me"), (1<<20)/8)
	for off := int64(0); off < 32<<20; off += int64(len(buf)) {
		if err := cl.WriteAt(buf, off, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.Flush(); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	polled := make(chan []rm.CloneProgress)
	go func() {
		var seen []rm.CloneProgress
		defer func() { polled <- seen }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var p rm.CloneProgress
			if code, err := c.callOn(agentName, "GET", "/v1/clones/vol-copy", nil, &p); err == nil && code == 200 && p.Running {
				seen = append(seen, p)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	r := runCmdTimeout(t, 60*time.Second, hacsBin, append([]string{"volume", "clone", "vol", "vol-copy", "--cluster", c.ports[agentName][0]}, cliCreds(filepath.Join(c.dir, "n1"))...)...)
	close(stop)
	seen := <-polled
	if r.code != 0 || !strings.Contains(r.stdout, "created vol-copy from vol") || strings.Contains(r.stderr, "\x1b") {
		t.Fatalf("clone: %v", r)
	}
	var last int64
	for _, p := range seen {
		if p.Total != 3*(32<<20) || p.Done < last || p.Done > p.Total {
			t.Errorf("clone progress went wrong: %+v after %d done (%d samples: %+v)", p, last, len(seen), seen)
			break
		}
		last = p.Done
	}
	t.Logf("clone progress: %d samples while it ran, the last %d of %d bytes; the CLI's stderr: %q", len(seen), last, 3*(32<<20), r.stderr)
	var after rm.CloneProgress
	if code, err := c.callOn(agentName, "GET", "/v1/clones/vol-copy", nil, &after); err != nil || code != 200 || after.Running {
		t.Errorf("clone progress after the clone: %d %v %+v", code, err, after)
	}
}

// callOn asks one agent.
func (c *rmCluster) callOn(name, method, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.api(name)+path, rd)
	if err != nil {
		return 0, err
	}
	resp, err := c.hc().Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode/100 == 2 {
		return resp.StatusCode, json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode, nil
}
