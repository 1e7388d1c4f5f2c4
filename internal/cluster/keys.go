package cluster

import (
	"fmt"
	"regexp"
	"strings"
)

// SchemaVersion is the version of the key schema (docs/SCHEMA.md). Agents
// with a different schema version refuse to join or run in a cluster.
const SchemaVersion = 1

// Key prefixes and keys of the cluster store. docs/SCHEMA.md says who writes
// each one; nothing else in hacs spells keys out.
const (
	Prefix          = "/hacs/"
	KeyClusterInfo  = Prefix + "cluster/info"
	KeyJoinSecret   = Prefix + "cluster/secret"
	PrefixNodes     = Prefix + "nodes/"
	PrefixRemoved   = Prefix + "removed/"
	PrefixDC        = Prefix + "dc/"
	PrefixEvents    = Prefix + "events/"
	PrefixVolumes   = Prefix + "volumes/"
	PrefixResources = Prefix + "resources/" // reserved for the resource manager
)

// NodeConfigKey is the node's static record (written by the node and by the
// join handler; no lease).
func NodeConfigKey(name string) string { return PrefixNodes + name + "/config" }

// NodeAdminKey holds what administrators set on a node (standby).
func NodeAdminKey(name string) string { return PrefixNodes + name + "/admin" }

// NodeAliveKey exists while the node holds its liveness lease.
func NodeAliveKey(name string) string { return PrefixNodes + name + "/alive" }

// NodePrefix is the prefix of all keys of one node.
func NodePrefix(name string) string { return PrefixNodes + name + "/" }

// RemovedKey is the tombstone of a removed node identity.
func RemovedKey(nodeID string) string { return PrefixRemoved + nodeID }

// VolumeStateKey holds a volume's mirror.State (epoch, primary, in-sync set).
func VolumeStateKey(volume string) string { return PrefixVolumes + volume + "/state" }

// SplitKey splits <prefix><name>/<part> (part may have more '/'); ok is
// false for a key not under prefix or without a '/' after the name.
func SplitKey(key, prefix string) (name, part string, ok bool) {
	rest, found := strings.CutPrefix(key, prefix)
	if !found {
		return "", "", false
	}
	return strings.Cut(rest, "/")
}

// splitNodeKey splits /hacs/nodes/<name>/<part>.
func splitNodeKey(key string) (name, part string, ok bool) {
	name, part, ok = SplitKey(key, PrefixNodes)
	return name, part, ok && name != "" && part != ""
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// ValidName checks a node or volume name: 1 to 63 lower-case letters,
// digits, '.', '_' or '-', starting and ending with a letter or digit (so
// that names are safe in keys, URLs, file names and the VHACS range syntax).
func ValidName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid %s name %q: use 1 to 63 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit", kind, name)
	}
	return nil
}
