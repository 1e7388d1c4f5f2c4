package store

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/hacs/hacs/internal/fsutil"
)

const (
	volumeFormat   = "hacs-volume"
	poolFormat     = "hacs-pool"
	formatVersion  = 1
	manifestName   = "volume.json"
	poolConfigName = "pool.json"
)

// manifestLayer describes one layer file of a volume, bottom first.
type manifestLayer struct {
	ID   uint64 `json:"id"`
	File string `json:"file"`
	// Snapshot names the snapshot whose topmost layer this is; "" for the
	// head (the last layer, the only writable one).
	Snapshot string    `json:"snapshot,omitempty"`
	Created  time.Time `json:"created"`
	// Frozen is when the layer stopped being the head (snapshot time).
	Frozen time.Time `json:"frozen,omitzero"`
	// Deleting marks a snapshot being deleted: its data is being merged
	// into the layer above; the merge resumes when the volume opens.
	Deleting bool `json:"deleting,omitempty"`
}

// manifest is volume.json.
type manifest struct {
	Format   string          `json:"format"`
	Version  int             `json:"version"`
	Name     string          `json:"name"`
	Size     int64           `json:"size"`
	NextID   uint64          `json:"next_layer_id"`
	Layers   []manifestLayer `json:"layers"`
	Checksum string          `json:"checksum"`
}

func (m *manifest) clone() manifest {
	c := *m
	c.Layers = append([]manifestLayer(nil), m.Layers...)
	c.Checksum = ""
	return c
}

// poolConfig is pool.json.
type poolConfig struct {
	Format     string  `json:"format"`
	Version    int     `json:"version"`
	Overcommit float64 `json:"overcommit"`
	Checksum   string  `json:"checksum"`
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// checkName validates a volume or snapshot name.
func checkName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid %s name %q: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", kind, name)
	}
	return nil
}

func layerFileName(id uint64) string { return fmt.Sprintf("layer-%06d.img", id) }

var layerFileRE = regexp.MustCompile(`^layer-[0-9]{6,}\.img$`)

// sealJSON marshals v after setting its checksum field (via set) to the
// SHA-256 of the encoding with an empty checksum.
func sealJSON(v any, set func(string)) ([]byte, error) {
	set("")
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(raw)
	set("sha256:" + hex.EncodeToString(sum[:]))
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// verifySum recomputes the checksum of a decoded document.
func verifySum(v any, stored string, set func(string)) error {
	set("")
	raw, err := json.Marshal(v)
	set(stored)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(raw)
	want := "sha256:" + hex.EncodeToString(sum[:])
	if stored != want {
		if stored == "" {
			return errors.New("checksum missing")
		}
		return fmt.Errorf("checksum mismatch (stored %s, content hashes to %s): the file was damaged or edited by hand", stored, want)
	}
	return nil
}

// writeAtomic replaces path with data durably (see fsutil).
func writeAtomic(path string, data []byte) error {
	return normalizeSpace(fsutil.WriteFileAtomic(path, data, 0o600))
}

func syncDir(dir string) error { return fsutil.SyncDir(dir) }

func encodeManifest(m *manifest) ([]byte, error) {
	return sealJSON(m, func(s string) { m.Checksum = s })
}

// readManifest loads and validates dir/volume.json. Every problem is
// reported with the file's path; nothing is repaired or guessed.
func readManifest(dir, wantName string) (*manifest, error) {
	path := filepath.Join(dir, manifestName)
	bad := func(format string, args ...any) error {
		return fmt.Errorf("volume manifest %s: %s", path, fmt.Sprintf(format, args...))
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("volume manifest %s: missing (not a hacs volume, or its creation did not finish): %w", path, err)
		}
		return nil, fmt.Errorf("volume manifest %s: %w", path, err)
	}
	var m manifest
	dec := json.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(&m); err != nil {
		return nil, bad("bad JSON: %v", err)
	}
	if dec.More() {
		return nil, bad("bad JSON: trailing data after the document")
	}
	if m.Format != volumeFormat {
		return nil, bad("not a hacs volume manifest (format %q, want %q)", m.Format, volumeFormat)
	}
	if m.Version != formatVersion {
		return nil, bad("unknown format version %d (this hacs reads version %d)", m.Version, formatVersion)
	}
	if err := verifySum(&m, m.Checksum, func(s string) { m.Checksum = s }); err != nil {
		return nil, bad("%v", err)
	}
	if m.Name != wantName {
		return nil, bad("names volume %q, but it lives in directory %q", m.Name, filepath.Base(dir))
	}
	if m.Size <= 0 || m.Size%blockSize != 0 {
		return nil, bad("invalid size %d (must be a positive multiple of %d)", m.Size, blockSize)
	}
	if len(m.Layers) == 0 {
		return nil, bad("no layers")
	}
	if len(m.Layers) > maxSlots+1 {
		return nil, bad("%d layers, more than the %d this hacs supports", len(m.Layers), maxSlots+1)
	}
	ids := map[uint64]bool{}
	snaps := map[string]bool{}
	for i, l := range m.Layers {
		if l.File == "" || l.File != filepath.Base(l.File) || !layerFileRE.MatchString(l.File) {
			return nil, bad("layer %d: invalid file name %q", i, l.File)
		}
		if ids[l.ID] || l.ID >= m.NextID {
			return nil, bad("layer %d: duplicate or out-of-range id %d", i, l.ID)
		}
		ids[l.ID] = true
		last := i == len(m.Layers)-1
		switch {
		case last && (l.Snapshot != "" || l.Deleting):
			return nil, bad("the last layer (%s) must be the writable head, not a snapshot", l.File)
		case !last && l.Snapshot == "":
			return nil, bad("layer %d (%s) is below the head but names no snapshot", i, l.File)
		case !last:
			if err := checkName("snapshot", l.Snapshot); err != nil {
				return nil, bad("layer %d: %v", i, err)
			}
			if snaps[l.Snapshot] {
				return nil, bad("snapshot %q appears twice", l.Snapshot)
			}
			snaps[l.Snapshot] = true
		}
	}
	return &m, nil
}

func encodePoolConfig(c *poolConfig) ([]byte, error) {
	return sealJSON(c, func(s string) { c.Checksum = s })
}

func readPoolConfig(dir string) (*poolConfig, error) {
	path := filepath.Join(dir, poolConfigName)
	bad := func(format string, args ...any) error {
		return fmt.Errorf("pool configuration %s: %s", path, fmt.Sprintf(format, args...))
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("pool configuration %s: missing (%s is not a hacs pool; create it first): %w", path, dir, err)
		}
		return nil, fmt.Errorf("pool configuration %s: %w", path, err)
	}
	var c poolConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, bad("bad JSON: %v", err)
	}
	if c.Format != poolFormat {
		return nil, bad("not a hacs pool configuration (format %q, want %q)", c.Format, poolFormat)
	}
	if c.Version != formatVersion {
		return nil, bad("unknown format version %d (this hacs reads version %d)", c.Version, formatVersion)
	}
	if err := verifySum(&c, c.Checksum, func(s string) { c.Checksum = s }); err != nil {
		return nil, bad("%v", err)
	}
	if !(c.Overcommit >= 1) || c.Overcommit > 1000 {
		return nil, bad("invalid overcommit ratio %v (must be between 1 and 1000)", c.Overcommit)
	}
	return &c, nil
}
