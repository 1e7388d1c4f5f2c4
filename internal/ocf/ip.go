package ocf

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ipAddr reads the ip type's parameters: the address with its prefix and
// the interface.
func ipAddr(params map[string]string) (netip.Prefix, string, error) {
	a, err := netip.ParseAddr(params["ip"])
	if err != nil {
		return netip.Prefix{}, "", fmt.Errorf("parameter ip %q: %w", params["ip"], err)
	}
	bits := a.BitLen()
	if s := params["cidr_netmask"]; s != "" {
		bits, err = strconv.Atoi(s)
		if err != nil || bits < 1 || bits > a.BitLen() {
			return netip.Prefix{}, "", fmt.Errorf("parameter cidr_netmask %q: want 1 to %d", s, a.BitLen())
		}
	}
	nic := params["nic"]
	if nic == "" || strings.ContainsAny(nic, " /\x00") || len(nic) > 15 {
		return netip.Prefix{}, "", fmt.Errorf("parameter nic %q: want an interface name", nic)
	}
	return netip.PrefixFrom(a, bits), nic, nil
}

// ValidateIP checks the ip type's parameters.
func ValidateIP(params map[string]string) error {
	if err := ipMetadata.Check(params); err != nil {
		return err
	}
	_, _, err := ipAddr(params)
	return err
}

func ipCmd(ctx context.Context, timeout time.Duration, args ...string) Result {
	path, err := exec.LookPath("ip")
	if err != nil {
		for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
			if _, e := os.Stat(p); e == nil {
				path, err = p, nil
				break
			}
		}
	}
	if err != nil {
		return Result{RC: RCErrInstalled, Message: "the ip command (iproute2) is not installed"}
	}
	env := append(os.Environ(), "PATH="+pathEnv(), "LC_ALL=C")
	return execute(ctx, path, args, env, timeout, 0)
}

// ipPresent tells whether the address is on the interface.
func ipPresent(ctx context.Context, pfx netip.Prefix, nic string, timeout time.Duration) (bool, Result) {
	res := ipCmd(ctx, timeout, "-o", "addr", "show", "dev", nic)
	if res.RC != 0 {
		return false, res
	}
	want := " " + pfx.Addr().String() + "/"
	return strings.Contains(res.Stdout, want), res
}

// runIP implements the ip type: start adds the address (and announces it
// with gratuitous ARP when arping is installed), stop removes it, monitor
// checks it is there.
func runIP(ctx context.Context, in Instance, action string, timeout time.Duration) Result {
	if timeout <= 0 {
		timeout = 20 * time.Second
	}
	switch action {
	case ActionMetaData:
		return Result{RC: RCOK, Stdout: "built-in ip type"}
	case ActionValidate:
		if err := ValidateIP(in.Params); err != nil {
			return Result{RC: RCErrConfigured, Message: err.Error()}
		}
		return Result{RC: RCOK}
	}
	pfx, nic, err := ipAddr(in.Params)
	if err != nil {
		return Result{RC: RCErrConfigured, Message: err.Error()}
	}
	present, res := ipPresent(ctx, pfx, nic, timeout)
	switch action {
	case ActionMonitor:
		if res.RC != 0 {
			if strings.Contains(res.Stderr, "does not exist") {
				// No such interface here: the address cannot be up.
				return Result{RC: RCNotRunning, Stderr: res.Stderr}
			}
			res.Message = "listing addresses of " + nic + ": " + Describe(res.RC) + tailOf(&tailBuffer{buf: []byte(res.Stderr)})
			return res
		}
		if present {
			return Result{RC: RCOK}
		}
		return Result{RC: RCNotRunning}
	case ActionStart:
		if res.RC != 0 {
			res.RC = RCErrConfigured
			res.Message = fmt.Sprintf("interface %s: %s", nic, lastLine(res.Stderr))
			return res
		}
		if !present {
			add := ipCmd(ctx, timeout, "addr", "add", pfx.String(), "dev", nic)
			if add.RC != 0 {
				add.RC = RCErrGeneric
				add.Message = "ip addr add " + pfx.String() + " dev " + nic + ": " + lastLine(add.Stderr)
				return add
			}
		}
		announce(ctx, pfx, nic, in.Params["arp_count"])
		return Result{RC: RCOK}
	case ActionStop:
		if res.RC != 0 || !present {
			return Result{RC: RCOK} // not there: stopped
		}
		del := ipCmd(ctx, timeout, "addr", "del", pfx.String(), "dev", nic)
		if del.RC != 0 {
			if again, _ := ipPresent(ctx, pfx, nic, timeout); !again {
				return Result{RC: RCOK}
			}
			del.RC = RCErrGeneric
			del.Message = "ip addr del " + pfx.String() + " dev " + nic + ": " + lastLine(del.Stderr)
			return del
		}
		return Result{RC: RCOK}
	}
	return Result{RC: RCErrUnimplemented, Message: "the ip type has no action " + action}
}

// announce sends gratuitous ARPs for an IPv4 address when arping is
// installed (best effort: neighbours learn the new place at once instead of
// when their ARP cache entry expires).
func announce(ctx context.Context, pfx netip.Prefix, nic, count string) {
	if !pfx.Addr().Is4() {
		return
	}
	n := 1
	if count != "" {
		if c, err := strconv.Atoi(count); err == nil && c >= 0 && c <= 10 {
			n = c
		}
	}
	if n == 0 {
		return
	}
	path, err := exec.LookPath("arping")
	if err != nil {
		if _, e := os.Stat("/usr/sbin/arping"); e != nil {
			return
		}
		path = "/usr/sbin/arping"
	}
	// iputils arping: -U unsolicited (gratuitous) ARP, -c count, -I iface.
	env := append(os.Environ(), "PATH="+pathEnv(), "LC_ALL=C")
	execute(ctx, path, []string{"-U", "-c", strconv.Itoa(n), "-w", strconv.Itoa(n + 1), "-I", nic, pfx.Addr().String()}, env, time.Duration(n+2)*time.Second, 0)
}
