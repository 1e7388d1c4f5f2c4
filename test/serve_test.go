package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/nbd"
)

const exportSize = 64 * mib

// newImage creates a sparse file of the given size in a temp dir.
func newImage(t testing.TB, size int64) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return file
}

// ---------------------------------------------------------------------------
// 1. nbdinfo: size, flags, names, list, read-only

func TestNbdinfoFlags(t *testing.T) {
	requireTools(t, "nbdinfo")
	for _, tc := range []struct {
		name     string
		readOnly bool
		tcp      bool
	}{
		{"read-write-unix", false, false},
		{"read-write-tcp", false, true},
		{"read-only", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServe(t, serveOpts{file: newImage(t, exportSize), name: "vm1", description: "hacs test disk", readOnly: tc.readOnly, tcp: tc.tcp})
			out := nbdinfo(t, s.uri())
			if !out.Structured {
				t.Errorf("structured replies not negotiated: %+v", out)
			}
			if out.Protocol != "newstyle-fixed" {
				t.Errorf("protocol %q, want newstyle-fixed", out.Protocol)
			}
			if len(out.Exports) != 1 {
				t.Fatalf("nbdinfo reports %d exports, want 1: %+v", len(out.Exports), out)
			}
			e := out.Exports[0]
			check := func(what string, got, want any) {
				t.Helper()
				if got != want {
					t.Errorf("%s = %v, want %v", what, got, want)
				}
			}
			check("export-size", e.Size, int64(exportSize))
			check("export-name", e.ExportName, "vm1")
			check("description", e.Description, "hacs test disk")
			check("is_read_only", e.IsReadOnly, tc.readOnly)
			check("can_flush", e.CanFlush, true)
			check("can_multi_conn", e.CanMultiConn, true)
			check("can_df", e.CanDF, true)
			check("can_trim", e.CanTrim, !tc.readOnly)
			check("can_zero", e.CanZero, !tc.readOnly)
			check("can_fast_zero", e.CanFastZero, !tc.readOnly)
			if !tc.readOnly {
				check("can_fua", e.CanFUA, true)
			}
			check("block_size_minimum", e.BlockMin, int64(1))
			check("block_size_preferred", e.BlockPref, int64(device.BlockSize))
			check("block_size_maximum", e.BlockMax, int64(nbd.MaxPayload))
			if !slices.Contains(e.Contexts, "base:allocation") {
				t.Errorf("contexts %q lack base:allocation", e.Contexts)
			}
		})
	}
}

func TestReadOnlyExport(t *testing.T) {
	requireTools(t, "qemu-io")
	file := newImage(t, 16*mib)
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	before := sha256File(t, file)
	s := startServe(t, serveOpts{file: file, readOnly: true})

	// qemu-io: reads work; opening for writing is refused with EPERM, and a
	// write through a read-only open fails.
	qemuIOFlags(t, []string{"-r"}, s.uri(), "read -P 0x5a 0 64k", "read -P 0 64k 64k")
	r := runQemuIO(t, s.uri(), "write -P 0x11 0 4k")
	if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "Permission denied") {
		t.Errorf("qemu-io write to a read-only export: want failure with \"Permission denied\", got %v", r)
	}
	r = runCmd(t, "qemu-io", "-r", "-f", "raw", "-c", "write -P 0x11 0 4k", s.uri())
	if r.code == 0 {
		t.Errorf("qemu-io -r write succeeded on a read-only export: %v", r)
	}

	// The hacs client: the server itself refuses writes with EPERM.
	c := s.dial(t)
	if !c.Capabilities().ReadOnly {
		t.Errorf("client capabilities: ReadOnly not set")
	}
	buf := make([]byte, 4096)
	if err := c.ReadAt(buf, 0); err != nil {
		t.Fatalf("read: %v", err)
	}
	checkBytes(t, "read-only read", 0, buf, bytes.Repeat([]byte{0x5a}, 4096))
	for _, op := range []struct {
		name string
		do   func() error
	}{
		{"write", func() error { return c.WriteAt(buf, 0, false) }},
		{"write-fua", func() error { return c.WriteAt(buf, 8192, true) }},
		{"trim", func() error { return c.Trim(0, 4096) }},
		{"write-zeroes", func() error { return c.WriteZeroes(0, 4096, 0) }},
	} {
		err := op.do()
		if !isErrno(err, syscall.EPERM) {
			t.Errorf("%s on a read-only export: got %v, want EPERM", op.name, err)
		}
	}
	// The connection survives the refusals.
	if err := c.ReadAt(buf, 4096); err != nil {
		t.Fatalf("read after refused writes: %v", err)
	}
	c.Close()
	if got := sha256File(t, file); got != before {
		t.Fatal("the backing file of a read-only export changed")
	}
}

func TestNbdinfoList(t *testing.T) {
	requireTools(t, "nbdinfo")
	s := startServe(t, serveOpts{name: "vm1", description: "hacs test disk"})
	out := nbdinfo(t, s.uriFor(""), "--list")
	var found bool
	for _, e := range out.Exports {
		if e.ExportName == "vm1" {
			found = true
			if e.Description != "hacs test disk" {
				t.Errorf("description %q, want %q", e.Description, "hacs test disk")
			}
			if e.Size != exportSize {
				t.Errorf("size %d, want %d", e.Size, exportSize)
			}
		}
	}
	if !found {
		t.Errorf("nbdinfo --list --json lacks export vm1: %+v", out)
	}
	// The human-readable form too.
	r := mustRun(t, "nbdinfo", "--list", s.uriFor(""))
	for _, want := range []string{`export="vm1"`, "description: hacs test disk", fmt.Sprintf("export-size: %d", exportSize)} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("nbdinfo --list output lacks %q:\n%s", want, r.stdout)
		}
	}
}

func TestExportNames(t *testing.T) {
	requireTools(t, "nbdinfo")
	for _, tc := range []struct {
		name    string
		served  string // --name
		tcp     bool
		asked   string
		wantErr bool
	}{
		{"named-by-name-unix", "vm1", false, "vm1", false},
		{"named-by-empty-unix", "vm1", false, "", false},
		{"named-by-name-tcp", "vm1", true, "vm1", false},
		{"named-by-empty-tcp", "vm1", true, "", false},
		{"unnamed-by-empty", "", false, "", false},
		{"unknown-name", "vm1", false, "nosuch", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServe(t, serveOpts{name: tc.served, tcp: tc.tcp})
			r := runCmd(t, "nbdinfo", "--json", s.uriFor(tc.asked))
			c, err := s.tryDial(tc.asked)
			if err == nil {
				defer c.Close()
			}
			if tc.wantErr {
				if r.code == 0 {
					t.Errorf("nbdinfo opened unknown export %q: %v", tc.asked, r)
				}
				if err == nil {
					t.Errorf("hacs client opened unknown export %q", tc.asked)
				}
				return
			}
			if r.code != 0 {
				t.Fatalf("nbdinfo: %v", r)
			}
			var out nbdinfoOutput
			if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
				t.Fatal(err)
			}
			if len(out.Exports) != 1 || out.Exports[0].Size != exportSize {
				t.Errorf("nbdinfo: want one export of %d bytes, got %+v", exportSize, out)
			}
			if err != nil {
				t.Fatalf("hacs client: %v", err)
			}
			if c.Size() != exportSize {
				t.Errorf("hacs client: size %d, want %d", c.Size(), exportSize)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// 2. nbdinfo --map: holes and data

func TestNbdinfoMap(t *testing.T) {
	requireTools(t, "nbdinfo", "qemu-io")
	s := startServe(t, serveOpts{})
	uri := s.uri()
	// expect checks the allocated ranges, and that everything else is
	// reported as a hole that reads as zeroes.
	expect := func(step string, want []span) {
		t.Helper()
		m := nbdMap(t, uri, exportSize)
		got := dataSpans(m)
		if !spansEqual(got, want) {
			t.Errorf("%s: data ranges %v, want %v (map %+v)", step, got, want, m)
		}
		for _, e := range m {
			if e.Type&1 != 0 && e.Type != 3 {
				t.Errorf("%s: hole at %d+%d has type %d (%s), want 3 (hole,zero)", step, e.Offset, e.Length, e.Type, e.Description)
			}
		}
	}
	expect("fresh sparse file", nil)

	qemuIO(t, uri, "write -P 0x11 1M 256k", "write -P 0x22 40M 64k")
	expect("after two writes", []span{{1 * mib, 256 << 10}, {40 * mib, 64 << 10}})

	// An unaligned write allocates the 4 KiB block around it.
	qemuIO(t, uri, "write -P 0x33 20971620 1000")
	expect("after an unaligned write", []span{{1 * mib, 256 << 10}, {20 * mib, 4096}, {40 * mib, 64 << 10}})

	qemuIO(t, uri, "discard 1M 256k", "read -P 0 1M 256k")
	expect("after discard", []span{{20 * mib, 4096}, {40 * mib, 64 << 10}})

	// Discard of part of a range leaves the rest allocated.
	qemuIO(t, uri, "write -P 0x44 48M 1M", "discard 48M 512k", "read -P 0 48M 512k", "read -P 0x44 50855936 512k")
	expect("after partial discard", []span{{20 * mib, 4096}, {40 * mib, 64 << 10}, {48*mib + 512<<10, 512 << 10}})

	qemuIO(t, uri, "write -z -u 40M 64k", "read -P 0 40M 64k")
	expect("after write -z -u", []span{{20 * mib, 4096}, {48*mib + 512<<10, 512 << 10}})

	qemuIO(t, uri, "write -z -u 0 64M", "read -P 0 0 64M")
	expect("after zeroing everything", nil)
}

// ---------------------------------------------------------------------------
// 3. qemu-io patterns

func TestQemuIO(t *testing.T) {
	requireTools(t, "qemu-io")
	var aioCmds, aioFinal []string
	for i := 0; i < 32; i++ {
		aioCmds = append(aioCmds, fmt.Sprintf("aio_write -P 0x%02x %d 64k", i+1, i*65536))
	}
	aioCmds = append(aioCmds, "aio_flush")
	for i := 0; i < 32; i++ {
		aioFinal = append(aioFinal, fmt.Sprintf("read -P 0x%02x %d 64k", i+1, i*65536))
	}
	aioFinal = append(aioFinal, "read -P 0 2M 64k")
	for _, tc := range []struct {
		name string
		cmds []string // run in one qemu-io process
		// final checks the end state from a second qemu-io process.
		final []string
	}{
		{"aligned", []string{
			"write -P 0xab 0 1M", "read -P 0xab 0 1M", "read -P 0 1M 64k",
			"write -P 0xcd 8M 4k", "read -P 0 8384512 4k", "read -P 0xcd 8M 4k", "read -P 0 8392704 4k",
		}, []string{"read -P 0xab 0 1M", "read -P 0 1M 7M", "read -P 0xcd 8M 4k", "read -P 0 8392704 4k"}},
		{"unaligned", []string{
			"write -P 0xab 0 1M",
			"write -P 0x11 5000 3000",
			"read -P 0xab 0 5000", "read -P 0x11 5000 3000", "read -P 0xab 8000 1040576",
			"write -P 0x22 1048575 2", "read -P 0xab 8000 1040575", "read -P 0x22 1048575 2", "read -P 0 1048577 4095",
		}, []string{"read -P 0xab 0 5000", "read -P 0x11 5000 3000", "read -P 0xab 8000 1040575", "read -P 0x22 1048575 2", "read -P 0 1048577 4095"}},
		{"single-bytes", []string{
			"write -P 0x33 4095 1", "write -P 0x44 4097 1",
			"read -P 0 0 4095", "read -P 0x33 4095 1", "read -P 0 4096 1", "read -P 0x44 4097 1", "read -P 0 4098 8190",
		}, []string{"read -P 0 0 4095", "read -P 0x33 4095 1", "read -P 0 4096 1", "read -P 0x44 4097 1", "read -P 0 4098 8190"}},
		{"large", []string{"write -P 0xc3 8M 40M", "read -P 0xc3 8M 40M"},
			[]string{"read -P 0 0 8M", "read -P 0xc3 8M 40M", "read -P 0 48M 16M"}},
		{"end-of-device", []string{"write -P 0x99 67104768 4k", "read -P 0x99 67104768 4k", "write -P 0x98 67108863 1"},
			[]string{"read -P 0x99 67104768 4095", "read -P 0x98 67108863 1", "read -P 0 67100672 4k"}},
		{"write-zeroes", []string{
			"write -P 0x55 0 256k",
			"write -z 64k 64k", "read -P 0x55 0 64k", "read -P 0 64k 64k", "read -P 0x55 128k 128k",
			"write -z 1000 100",
			"write -z -u 128k 64k",
		}, []string{
			"read -P 0x55 0 1000", "read -P 0 1000 100", "read -P 0x55 1100 64436", "read -P 0 64k 64k",
			"read -P 0 128k 64k", "read -P 0x55 192k 64k", "read -P 0 256k 64k",
		}},
		{"discard", []string{
			"write -P 0x66 0 1M",
			"discard 256k 256k", "read -P 0x66 0 256k", "read -P 0 256k 256k", "read -P 0x66 512k 512k",
		}, []string{"read -P 0x66 0 256k", "read -P 0 256k 256k", "read -P 0x66 512k 512k"}},
		{"discard-unaligned", []string{
			"write -P 0x67 0 64k", "discard 100 10000", "discard 30001 3",
		}, []string{
			"read -P 0x67 0 100", "read -P 0 100 10000", "read -P 0x67 10100 19901",
			"read -P 0 30001 3", "read -P 0x67 30004 35532",
		}},
		{"flush-fua", []string{
			"write -P 0x77 0 64k", "flush", "write -f -P 0x78 64k 64k", "write -f -P 0x79 130000 1000", "flush",
		}, []string{"read -P 0x77 0 64k", "read -P 0x78 64k 64000", "read -P 0x79 130000 1000", "read -P 0x78 131000 72"}},
		{"sparse-reads", []string{
			// One read over data and holes at unaligned offsets: a server
			// may answer with data and hole chunks.
			"write -P 0xab 4k 4k", "write -P 0xcd 12k 4k",
			"read -P 0 -s 0 -l 3996 100 15900", "read -P 0xab -s 3996 -l 4096 100 15900",
			"read -P 0 -s 8092 -l 4096 100 15900", "read -P 0xcd -s 12188 -l 3712 100 15900",
		}, []string{
			"read -P 0 -s 0 -l 4095 1 16384", "read -P 0xab -s 4095 -l 4096 1 16384",
			"read -P 0 -s 8191 -l 4096 1 16384", "read -P 0xcd -s 12287 -l 4096 1 16384",
			"read -P 0 -s 16383 -l 1 1 16384",
		}},
		{"aio", aioCmds, aioFinal},
		{"writev", []string{
			"writev -P 0x44 128k 4k 8k 512", "readv -P 0x44 128k 4k 8k 512",
			"writev -P 0x45 3 1 4095 5000", "readv -P 0x45 3 4096 5000",
		}, []string{"read -P 0 0 3", "read -P 0x45 3 9096", "read -P 0 9099 100", "read -P 0x44 128k 12800", "read -P 0 143872 4k"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServe(t, serveOpts{})
			qemuIO(t, s.uri(), tc.cmds...)
			qemuIOFlags(t, []string{"-r"}, s.uri(), tc.final...)
		})
	}
}

// ---------------------------------------------------------------------------
// 4. qemu-img convert / compare

func TestQemuImgCompare(t *testing.T) {
	requireTools(t, "qemu-img", "qemu-io")
	const size = 32 * mib
	rng := newRand(t)
	local := filepath.Join(t.TempDir(), "local.img")
	writeSparseRandomFile(t, rng, local, size, []span{{4 * mib, 2 * mib}, {20 * mib, 64 << 10}})
	s := startServe(t, serveOpts{size: "32M"})
	uri := s.uri()

	mustRun(t, "qemu-img", "convert", "-n", "-W", "-m", "8", "-f", "raw", "-O", "raw", local, uri)
	r := runCmd(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", local, uri)
	if r.code != 0 {
		t.Fatalf("qemu-img compare after convert: want exit 0, got %v", r)
	}

	// One byte changed through qemu-io is found.
	const off = 12345
	b := make([]byte, 1)
	f, err := os.Open(local)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	f.Close()
	qemuIO(t, uri, fmt.Sprintf("write -P 0x%02x %d 1", b[0]^0xff, off))
	r = runCmd(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", local, uri)
	if r.code != 1 {
		t.Fatalf("qemu-img compare after a one-byte change: want exit 1, got %v", r)
	}
	// qemu-img reports the sector the difference is in.
	var at int64
	if _, err := fmt.Sscanf(strings.TrimSpace(r.stdout), "Content mismatch at offset %d!", &at); err != nil || at > off || off-at >= 4096 {
		t.Errorf("qemu-img compare: want \"Content mismatch at offset N!\" with N the sector of offset %d, got %v", off, r)
	}
	// Put it back: equal again.
	qemuIO(t, uri, fmt.Sprintf("write -P 0x%02x %d 1", b[0], off))
	if r := runCmd(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", local, uri); r.code != 0 {
		t.Fatalf("qemu-img compare after restoring the byte: want exit 0, got %v", r)
	}
	// And the export's backing file holds the same bytes.
	if a, b := sha256File(t, local), sha256File(t, s.file); a != b {
		t.Errorf("backing file differs from the source after convert")
	}
}

// ---------------------------------------------------------------------------
// 5. nbdcopy round trips

func TestNbdcopy(t *testing.T) {
	requireTools(t, "nbdcopy", "nbdinfo")
	rng := newRand(t)
	holes := []span{{8 * mib, 4 * mib}, {30 * mib, 64 << 10}, {60 * mib, 4 * mib}}
	src := filepath.Join(t.TempDir(), "src.img")
	writeSparseRandomFile(t, rng, src, exportSize, holes)
	want := sha256File(t, src)
	wantData := []span{{0, 8 * mib}, {12 * mib, 18 * mib}, {30*mib + 64<<10, 30*mib - 64<<10}}

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"single", []string{"--connections=1", "--requests=1"}},
		{"default", nil},
		{"multi-conn", []string{"--connections=4", "--requests=16"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServe(t, serveOpts{})
			mustRun(t, "nbdcopy", append(slices.Clone(tc.args), "--flush", src, s.uri())...)
			// Holes in the source stay holes in the export.
			if got := dataSpans(nbdMap(t, s.uri(), exportSize)); !spansEqual(got, wantData) {
				t.Errorf("export data ranges after nbdcopy: %v, want %v", got, wantData)
			}
			out := filepath.Join(t.TempDir(), "out.img")
			mustRun(t, "nbdcopy", append(slices.Clone(tc.args), s.uri(), out)...)
			if got := sha256File(t, out); got != want {
				t.Errorf("round trip through the export: sha256 %s, want %s", got, want)
			}
			if got := sha256File(t, s.file); got != want {
				t.Errorf("backing file: sha256 %s, want %s", got, want)
			}
		})
	}

	t.Run("export-to-export", func(t *testing.T) {
		a := startServe(t, serveOpts{})
		b := startServe(t, serveOpts{})
		mustRun(t, "nbdcopy", "--connections=4", "--requests=16", src, a.uri())
		mustRun(t, "nbdcopy", "--connections=4", "--requests=16", "--flush", a.uri(), b.uri())
		out := filepath.Join(t.TempDir(), "out.img")
		mustRun(t, "nbdcopy", b.uri(), out)
		if got := sha256File(t, out); got != want {
			t.Errorf("copy between two exports: sha256 %s, want %s", got, want)
		}
	})
}

// ---------------------------------------------------------------------------
// 6. fio with verification

// fioOutput is the part of fio's JSON output the test checks.
type fioOutput struct {
	Jobs []struct {
		Jobname string `json:"jobname"`
		Error   int    `json:"error"`
		Read    struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"read"`
		Write struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"write"`
	} `json:"jobs"`
}

func TestFio(t *testing.T) {
	requireTools(t, "fio")
	if r := runCmd(t, "fio", "--enghelp=nbd"); r.code != 0 {
		t.Fatalf("fio lacks the nbd ioengine (Debian's fio package has it): %v", r)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"randrw-4k-qd16", []string{"--rw=randrw", "--bs=4k", "--iodepth=16", "--size=64M", "--runtime=40"}},
		{"seq-write-1m", []string{"--rw=write", "--bs=1M", "--iodepth=8", "--size=64M"}},
		{"randwrite-unaligned-2jobs", []string{"--rw=randwrite", "--bsrange=512-64k", "--bs_unaligned=1", "--iodepth=8",
			"--numjobs=2", "--size=32M", "--offset_increment=32M", "--runtime=40"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServe(t, serveOpts{})
			outFile := filepath.Join(t.TempDir(), "fio.json")
			args := append([]string{
				"--name=" + tc.name, "--ioengine=nbd", "--uri=" + s.uri(),
				"--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
				"--verify_state_save=0", // no *-verify.state files in the package directory
				"--output-format=json", "--output=" + outFile,
			}, tc.args...)
			r := runCmd(t, "fio", args...)
			raw, _ := os.ReadFile(outFile)
			if r.code != 0 {
				t.Fatalf("fio failed: %v\njson:\n%s", r, clip(string(raw)))
			}
			if i := bytes.IndexByte(raw, '{'); i > 0 {
				raw = raw[i:] // fio's nbd engine prints a line before the JSON
			}
			var out fioOutput
			if err := json.Unmarshal(raw, &out); err != nil {
				t.Fatalf("parsing fio JSON: %v\n%s", err, clip(string(raw)))
			}
			if len(out.Jobs) == 0 {
				t.Fatalf("fio JSON has no jobs:\n%s", clip(string(raw)))
			}
			for _, j := range out.Jobs {
				if j.Error != 0 {
					t.Errorf("fio job %s: error %d", j.Jobname, j.Error)
				}
				if j.Write.IOBytes == 0 || j.Read.IOBytes == 0 {
					t.Errorf("fio job %s: wrote %d and read %d bytes; want both > 0 (verification reads)", j.Jobname, j.Write.IOBytes, j.Read.IOBytes)
				}
			}
			if strings.Contains(r.stderr, "verify") {
				t.Errorf("fio reported verification problems:\n%s", clip(r.stderr))
			}
		})
	}
}

// ---------------------------------------------------------------------------
// 7. ext4 on a loop device on nbdfuse

func TestExt4OverNbdfuse(t *testing.T) {
	requireRoot(t, "FUSE, loop devices and mount")
	requireTools(t, "nbdfuse", "fusermount3", "losetup", "blockdev", "mkfs.ext4", "e2fsck", "mount", "umount")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("/dev/fuse is missing (load the fuse module): %v", err)
	}
	rng := newRand(t)
	s := startServe(t, serveOpts{size: "128M"})
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	fsDir := filepath.Join(dir, "fs")
	for _, d := range []string{mnt, fsDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fuseFile := filepath.Join(mnt, "nbd")

	// Cleanups run in reverse order: umount, losetup -d, fusermount3, kill.
	fuse := startProc(t, false, "nbdfuse", fuseFile, s.uri())
	fuseMounted := true
	t.Cleanup(func() {
		if fuseMounted {
			runCmd(t, "fusermount3", "-u", "-z", mnt)
		}
	})
	fuse.waitReady(t, "the FUSE file "+fuseFile, func() error {
		st, err := os.Stat(fuseFile)
		if err == nil && st.Size() != 128*mib {
			return fmt.Errorf("size %d", st.Size())
		}
		return err
	})

	loop := strings.TrimSpace(mustRun(t, "losetup", "-f", "--show", fuseFile).stdout)
	if !strings.HasPrefix(loop, "/dev/loop") {
		t.Fatalf("losetup printed %q", loop)
	}
	loopAttached := true
	t.Cleanup(func() {
		if loopAttached {
			runCmd(t, "losetup", "-d", loop)
		}
	})
	mounted := false
	t.Cleanup(func() {
		if mounted {
			runCmd(t, "umount", "-l", fsDir)
		}
	})
	mount := func() {
		t.Helper()
		mustRunWhileBusy(t, "mount", "-t", "ext4", loop, fsDir)
		mounted = true
	}
	umount := func() {
		t.Helper()
		mustRun(t, "umount", fsDir)
		mounted = false
	}

	mustRun(t, "mkfs.ext4", "-q", "-F", loop)
	mount()

	// One large file and many small ones in a few directories.
	want := map[string][]byte{}
	big := make([]byte, 20*mib)
	fillRandom(rng, big)
	want["big.bin"] = big
	for i := 0; i < 300; i++ {
		p := make([]byte, rng.IntN(20000))
		fillRandom(rng, p)
		want[fmt.Sprintf("d%02d/f%03d", i%10, i)] = p
	}
	for name, data := range want {
		path := filepath.Join(fsDir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	syscall.Sync()
	verify := func(step string) {
		t.Helper()
		for name, data := range want {
			got, err := os.ReadFile(filepath.Join(fsDir, name))
			if err != nil {
				t.Fatalf("%s: %v", step, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("%s: %s differs (%d bytes read, %d written)", step, name, len(got), len(data))
			}
		}
	}
	verify("before umount")
	umount()
	mustRun(t, "e2fsck", "-fn", loop)

	// Remount: drop the loop device's page cache first so that data really
	// comes back through FUSE and NBD.
	mustRun(t, "blockdev", "--flushbufs", loop)
	mount()
	verify("after remount")
	umount()

	mustRun(t, "losetup", "-d", loop)
	loopAttached = false
	mustRunWhileBusy(t, "fusermount3", "-u", mnt)
	fuseMounted = false
	select {
	case <-fuse.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("nbdfuse did not exit after fusermount3 -u")
	}
	// The server's backing file itself holds a clean file system.
	mustRun(t, "e2fsck", "-fn", s.file)
}

// ---------------------------------------------------------------------------
// 8. The hacs NBD client against nbdkit and hacs serve

func TestClient(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) *server
	}{
		{"nbdkit-memory", func(t *testing.T) *server { return startNbdkit(t, "memory", "64M") }},
		{"nbdkit-file", func(t *testing.T) *server {
			file := newImage(t, exportSize)
			s := startNbdkit(t, "file", file)
			s.file = file
			return s
		}},
		{"hacs-serve", func(t *testing.T) *server { return startServe(t, serveOpts{name: "vm1"}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.start(t)
			clientSuite(t, s)
		})
	}
}

// clientSuite exercises the hacs client against a 64 MiB export. Each
// subtest uses its own region of the device.
func clientSuite(t *testing.T, s *server) {
	rng := newRand(t)
	c := s.dial(t)
	// mirror is what the device should hold; zero at the start.
	mirror := make([]byte, exportSize)
	read := func(t *testing.T, off, n int64) []byte {
		t.Helper()
		p := make([]byte, n)
		if err := c.ReadAt(p, off); err != nil {
			t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
		}
		return p
	}
	write := func(t *testing.T, p []byte, off int64, fua bool) {
		t.Helper()
		if err := c.WriteAt(p, off, fua); err != nil {
			t.Fatalf("WriteAt(%d, %d, fua=%v): %v", off, len(p), fua, err)
		}
		copy(mirror[off:], p)
	}
	verify := func(t *testing.T, what string, off, n int64) {
		t.Helper()
		checkBytes(t, what, off, read(t, off, n), mirror[off:off+n])
	}

	t.Run("info", func(t *testing.T) {
		if c.Size() != exportSize {
			t.Errorf("size %d, want %d", c.Size(), exportSize)
		}
		caps := c.Capabilities()
		if caps.ReadOnly || !caps.Flush || !caps.FUA || !caps.Trim || !caps.Zero || !caps.Extents || !caps.MultiConn {
			t.Errorf("capabilities %+v: want writable with flush, FUA, trim, zero, extents and multi-conn", caps)
		}
		if info := c.Info(); !info.Structured || !info.BlockStatus || info.MaxPayload == 0 || info.MaxPayload > nbd.MaxPayload {
			t.Errorf("export info %+v", info)
		}
	})

	t.Run("patterns", func(t *testing.T) {
		const base = 0
		p := make([]byte, 4*mib)
		fillRandom(rng, p)
		write(t, p, base, false)
		verify(t, "4 MiB random", base, 4*mib)
		write(t, bytes.Repeat([]byte{0xa5}, 64<<10), base+mib, true)
		write(t, bytes.Repeat([]byte{0x5a}, 4096), base+3*mib, false)
		verify(t, "after FUA and plain writes", base, 4*mib+4096)
		if err := c.Flush(); err != nil {
			t.Fatalf("Flush: %v", err)
		}
	})

	t.Run("unaligned", func(t *testing.T) {
		const base = 4 * mib
		write(t, bytes.Repeat([]byte{0xab}, 64<<10), base, false)
		for i, w := range []struct{ off, n int64 }{
			{5000, 3000}, {4095, 1}, {4097, 2}, {65535, 1}, {12288 - 7, 14}, {100, 20000}, {65536 - 10, 30}, {1, 4095},
		} {
			p := make([]byte, w.n)
			fillRandom(rng, p)
			write(t, p, base+w.off, false)
			verify(t, fmt.Sprintf("after unaligned write %d", i), base, 128<<10)
		}
		// Unaligned reads.
		for _, r := range []struct{ off, n int64 }{{4093, 10}, {1, 1}, {65535, 2}, {777, 12345}} {
			verify(t, "unaligned read", base+r.off, r.n)
		}
	})

	t.Run("trim", func(t *testing.T) {
		const base = 8 * mib
		write(t, bytes.Repeat([]byte{0x66}, mib), base, false)
		if err := c.Trim(base+256<<10, 512<<10); err != nil {
			t.Fatalf("Trim: %v", err)
		}
		clear(mirror[base+256<<10 : base+768<<10])
		verify(t, "after trim", base, mib)
		// Unaligned trims zero exactly their range, not the neighbours.
		for _, r := range []struct{ off, n int64 }{{100, 10000}, {30001, 3}, {800<<10 + 5, 4096}} {
			if err := c.Trim(base+r.off, r.n); err != nil {
				t.Fatalf("Trim(%d, %d): %v", base+r.off, r.n, err)
			}
			clear(mirror[base+r.off : base+r.off+r.n])
		}
		verify(t, "after unaligned trims", base, mib)
	})

	t.Run("write-zeroes", func(t *testing.T) {
		const base = 10 * mib
		write(t, bytes.Repeat([]byte{0x77}, mib), base, false)
		zero := func(off, n int64, fl device.ZeroFlags) {
			t.Helper()
			if err := c.WriteZeroes(base+off, n, fl); err != nil {
				t.Fatalf("WriteZeroes(%d, %d, %v): %v", base+off, n, fl, err)
			}
			clear(mirror[base+off : base+off+n])
		}
		zero(4096, 64<<10, 0)
		zero(100<<10+3, 1000, 0)
		zero(512<<10, 64<<10, device.ZeroNoHole)
		zero(600<<10+17, 5000, device.ZeroNoHole)
		if c.Capabilities().FastZero {
			err := c.WriteZeroes(base+768<<10, 64<<10, device.ZeroFast)
			switch {
			case err == nil:
				clear(mirror[base+768<<10 : base+832<<10])
			case !isErrno(err, syscall.ENOTSUP):
				t.Errorf("fast zero: %v, want success or ENOTSUP", err)
			}
		}
		verify(t, "after write zeroes", base, mib)
	})

	t.Run("extents", func(t *testing.T) {
		const base, n = 12 * mib, 4 * mib
		if err := c.Trim(base, n); err != nil {
			t.Fatalf("Trim: %v", err)
		}
		clear(mirror[base : base+n])
		p := make([]byte, mib)
		fillRandom(rng, p)
		write(t, p, base+mib, false)
		if err := c.WriteZeroes(base+mib+512<<10, 256<<10, 0); err != nil {
			t.Fatal(err)
		}
		clear(mirror[base+mib+512<<10 : base+mib+768<<10])
		// Collect the flags of every byte range, in 4 KiB blocks.
		flags := make([]uint32, n/4096)
		for off := int64(base); off < base+n; {
			exts, err := c.Extents(off, base+n-off)
			if err != nil {
				t.Fatalf("Extents(%d, %d): %v", off, base+n-off, err)
			}
			for _, e := range exts {
				if e.Length <= 0 {
					t.Fatalf("Extents(%d): empty extent in %+v", off, exts)
				}
				for b := off; b < min(off+e.Length, base+n); b += 4096 {
					flags[(b-base)/4096] = e.Flags
				}
				off += e.Length
			}
		}
		for i, f := range flags {
			off := base + int64(i)*4096
			switch {
			case off >= base+mib+512<<10 && off < base+mib+768<<10:
				if f&device.ExtentZero == 0 {
					t.Errorf("zeroed block at %d: flags %d, want ZERO", off, f)
				}
			case off >= base+mib && off < base+2*mib:
				if f&device.ExtentHole != 0 {
					t.Errorf("written block at %d: flags %d, want data", off, f)
				}
			default:
				if f != device.ExtentHole|device.ExtentZero {
					t.Errorf("trimmed block at %d: flags %d, want HOLE|ZERO", off, f)
				}
			}
			if t.Failed() {
				break
			}
		}
		verify(t, "extents region", base, n)

		// At the end of the device: at least one byte, never past the end.
		for _, q := range []struct{ off, n int64 }{{exportSize - 8192, 8192}, {exportSize - 1, 1}, {0, 1}} {
			exts, err := c.Extents(q.off, q.n)
			if err != nil {
				t.Fatalf("Extents(%d, %d): %v", q.off, q.n, err)
			}
			var total int64
			for _, e := range exts {
				total += e.Length
			}
			if total <= 0 || q.off+total > exportSize {
				t.Errorf("Extents(%d, %d) cover %d bytes: %+v", q.off, q.n, total, exts)
			}
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		const base, n = 16 * mib, 8 * mib
		const workers, writes = 16, 200
		if err := c.WriteZeroes(base, n, 0); err != nil {
			t.Fatal(err)
		}
		clear(mirror[base : base+n])
		var wg sync.WaitGroup
		seeds := make([]uint64, workers)
		for g := range seeds {
			seeds[g] = rng.Uint64()
		}
		for g := 0; g < workers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(seeds[g], uint64(g)))
				nblocks := int64(n / 4096 / workers)
				var written []int64
				buf := make([]byte, 4096)
				for i := 0; i < writes; i++ {
					off := base + (r.Int64N(nblocks)*workers+int64(g))*4096
					fillRandom(r, buf)
					if err := c.WriteAt(buf, off, i%50 == 0); err != nil {
						t.Errorf("worker %d: WriteAt(%d): %v", g, off, err)
						return
					}
					copy(mirror[off:off+4096], buf) // blocks are owned by one worker
					written = append(written, off)
					if i%10 == 9 { // read back an earlier block meanwhile
						off := written[r.IntN(len(written))]
						got := make([]byte, 4096)
						if err := c.ReadAt(got, off); err != nil {
							t.Errorf("worker %d: ReadAt(%d): %v", g, off, err)
							return
						}
						if i := firstDiff(got, mirror[off:off+4096]); i >= 0 {
							t.Errorf("worker %d: block %d differs at byte %d", g, off, i)
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		verify(t, "after concurrent writes", base, n)
	})

	t.Run("concurrent-unaligned", func(t *testing.T) {
		// Workers write disjoint 256-byte slices of the same 4 KiB blocks
		// at once, half of them through a second connection: a server that
		// does read-modify-write without locking loses some of them.
		const base, blocks, workers = 24 * mib, 64, 16
		c2 := s.dial(t)
		var wg sync.WaitGroup
		seeds := make([]uint64, workers)
		for g := range seeds {
			seeds[g] = rng.Uint64()
		}
		final := make([][]byte, workers)
		for g := 0; g < workers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(seeds[g], uint64(g)))
				cc := c
				if g%2 == 1 {
					cc = c2
				}
				for round := 0; round < 3; round++ {
					for _, b := range r.Perm(blocks) {
						off := base + int64(b)*4096 + int64(g)*256
						p := bytes.Repeat([]byte{byte(round*workers + g + 1)}, 256)
						if err := cc.WriteAt(p, off, false); err != nil {
							t.Errorf("worker %d: WriteAt(%d): %v", g, off, err)
							return
						}
					}
				}
				final[g] = bytes.Repeat([]byte{byte(2*workers + g + 1)}, 256)
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		for b := int64(0); b < blocks; b++ {
			for g := 0; g < workers; g++ {
				copy(mirror[base+b*4096+int64(g)*256:], final[g])
			}
		}
		verify(t, "after concurrent unaligned writes (connection 1)", base, blocks*4096)
		got := make([]byte, blocks*4096)
		if err := c2.ReadAt(got, base); err != nil {
			t.Fatal(err)
		}
		checkBytes(t, "after concurrent unaligned writes (connection 2)", base, got, mirror[base:base+blocks*4096])
	})

	t.Run("large-io", func(t *testing.T) {
		// 36 MiB, more than the 32 MiB maximum payload: split by the client.
		const base, n = 28 * mib, 36 * mib
		p := make([]byte, n)
		fillRandom(rng, p)
		write(t, p, base, false)
		verify(t, "36 MiB read", base, n)
	})

	t.Run("out-of-range", func(t *testing.T) {
		p := make([]byte, 8192)
		if err := c.ReadAt(p, exportSize-4096); err == nil {
			t.Errorf("read past the end succeeded")
		} else if !isErrno(err, syscall.EINVAL) {
			t.Errorf("read past the end: %v, want EINVAL", err)
		}
		if err := c.WriteAt(p, exportSize-4096, false); err == nil {
			t.Errorf("write past the end succeeded")
		} else if !isErrno(err, syscall.ENOSPC) && !isErrno(err, syscall.EINVAL) {
			t.Errorf("write past the end: %v, want ENOSPC or EINVAL", err)
		}
		// The connection is still usable.
		verify(t, "after out-of-range requests", exportSize-8192, 8192)
	})

	if s.file != "" {
		t.Run("backing-file", func(t *testing.T) {
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(s.file)
			if err != nil {
				t.Fatal(err)
			}
			checkBytes(t, "backing file", 0, got, mirror)
		})
	}
}

// ---------------------------------------------------------------------------
// 9. Several clients at once

func TestConcurrentClients(t *testing.T) {
	requireTools(t, "qemu-io")
	s := startServe(t, serveOpts{})
	rng := newRand(t)
	const chunk = 64 << 10
	const rounds = 4
	pattern := func(region, round, i int) byte { return byte(1 + (region*101+round*37+i)%250) }

	// qemu-io regions [0,16M) and [16M,32M): rounds of pipelined writes,
	// then reads of the last round.
	qemuCmds := func(region int) []string {
		var cmds []string
		base := region * 16 * mib
		for round := 0; round < rounds; round++ {
			for i := 0; i < 16*mib/chunk; i++ {
				cmds = append(cmds, fmt.Sprintf("aio_write -P %d %d %d", pattern(region, round, i), base+i*chunk, chunk))
			}
			cmds = append(cmds, "aio_flush")
		}
		for i := 0; i < 16*mib/chunk; i++ {
			cmds = append(cmds, fmt.Sprintf("read -P %d %d %d", pattern(region, rounds-1, i), base+i*chunk, chunk))
		}
		return cmds
	}

	var wg sync.WaitGroup
	results := make([]result, 2)
	for region := 0; region < 2; region++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[region] = runQemuIO(t, s.uri(), qemuCmds(region)...)
		}()
	}

	// hacs client on [32M,64M): 8 goroutines over two connections.
	const base, n, workers = 32 * mib, 32 * mib, 8
	mirror := make([]byte, n)
	conns := []*nbd.Client{s.dial(t), s.dial(t)}
	seeds := make([]uint64, workers)
	for g := range seeds {
		seeds[g] = rng.Uint64()
	}
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := conns[g%2]
			r := rand.New(rand.NewPCG(seeds[g], uint64(g)))
			const bs = 16 << 10
			nblocks := int64(n / bs / workers)
			buf := make([]byte, bs)
			got := make([]byte, bs)
			for i := 0; i < 300; i++ {
				rel := (r.Int64N(nblocks)*workers + int64(g)) * bs
				fillRandom(r, buf)
				if err := c.WriteAt(buf, base+rel, false); err != nil {
					t.Errorf("hacs client %d: WriteAt: %v", g, err)
					return
				}
				copy(mirror[rel:], buf)
				if err := c.ReadAt(got, base+rel); err != nil {
					t.Errorf("hacs client %d: ReadAt: %v", g, err)
					return
				}
				if !bytes.Equal(got, buf) {
					t.Errorf("hacs client %d: block at %d read back differently", g, base+rel)
					return
				}
			}
		}()
	}
	wg.Wait()
	for region, r := range results {
		if r.code != 0 || qemuIOFailed(r) {
			t.Errorf("qemu-io on region %d: %v", region, r)
		}
	}
	if t.Failed() {
		return
	}

	// Cross-check every region through a fresh connection of the other kind.
	c := s.dial(t)
	got := make([]byte, 32*mib)
	if err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for region := 0; region < 2; region++ {
		for i := 0; i < 16*mib/chunk; i++ {
			off := region*16*mib + i*chunk
			checkBytes(t, fmt.Sprintf("qemu-io region %d", region), int64(off), got[off:off+chunk], bytes.Repeat([]byte{pattern(region, rounds-1, i)}, chunk))
		}
	}
	if err := c.ReadAt(got, base); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "hacs client region", base, got, mirror)
	f, err := os.Open(s.file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, base); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "backing file, hacs client region", base, got, mirror)
}
