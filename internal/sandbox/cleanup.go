package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// EnvMarker is set in the environment of every process the sandbox starts (and inherited by
// etcd and kube-apiserver), valued with the state dir: /proc/<pid>/environ then tells which
// processes a crashed run left behind, without a pid file that could name a reused pid.
const EnvMarker = "WEFT_SANDBOX_STATE"

// staleProcesses lists pids (other than ours) whose environment carries the marker for dir.
func staleProcesses(dir string) []int {
	want := []byte(EnvMarker + "=" + dir + "\x00")
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		if bytes.Contains(append([]byte{0}, env...), append([]byte{0}, want...)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Cleanup removes what a previous run with this state dir left: its processes (SIGKILL, they
// have no one to drain for), pod namespaces and veths named weft-*/weftv*, the bridge, the
// host rules marked as the local mesh's (HostRule) and the state dir's contents. It reports
// what it removed.
func Cleanup(ctx context.Context, stateDir, bridge string) ([]string, error) {
	removed := killProcesses(stateDir)
	removed = append(removed, removeNetwork(ctx, bridge)...)
	removed = append(removed, removeHostRules(ctx)...)
	if entries, err := os.ReadDir(stateDir); err == nil {
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(stateDir, e.Name())); err != nil {
				return removed, fmt.Errorf("removing stale state %s: %w", filepath.Join(stateDir, e.Name()), err)
			}
		}
	}
	return removed, nil
}

// killProcesses SIGKILLs every process carrying the marker for stateDir and waits for them
// to go, so their ports and files are free.
func killProcesses(stateDir string) []string {
	var removed []string
	pids := staleProcesses(stateDir)
	for _, pid := range pids {
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			removed = append(removed, "process "+strconv.Itoa(pid))
		}
	}
	waitGone(pids)
	return removed
}

// killNetnsProcesses SIGKILLs the processes still running in network namespace name and
// waits for them to go. The environment marker misses some of a pod's processes:
// redis-server, for one, writes its process title over its environ, so /proc/<pid>/environ
// no longer carries the marker, and it would outlive its run in an unnamed namespace.
func killNetnsProcesses(ctx context.Context, name string) []string {
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", name).Output()
	if err != nil {
		return nil
	}
	var removed []string
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			pids = append(pids, pid)
			removed = append(removed, "process "+f+" in netns "+name)
		}
	}
	waitGone(pids)
	return removed
}

// waitGone waits up to 5 s for each of pids to exit.
func waitGone(pids []int) {
	for _, pid := range pids {
		for i := 0; i < 50 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// removeNetwork deletes every weft-* network namespace (and its /etc/netns files) with the
// processes still in it, every weftv* veth and the bridge.
func removeNetwork(ctx context.Context, bridge string) []string {
	var removed []string
	if entries, err := os.ReadDir(netnsEtc); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), prefix+"-") && removeNetnsEtc(e.Name()) == nil {
				removed = append(removed, filepath.Join(netnsEtc, e.Name()))
			}
		}
	}
	if out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
				removed = append(removed, killNetnsProcesses(ctx, f[0])...)
				if ip(ctx, "netns", "del", f[0]) == nil {
					removed = append(removed, "netns "+f[0])
				}
			}
		}
	}
	if out, err := exec.CommandContext(ctx, "ip", "-o", "link", "show").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if strings.HasPrefix(name, prefix+"v") || name == bridge {
				if ip(ctx, "link", "del", name) == nil {
					removed = append(removed, "link "+name)
				}
			}
		}
	}
	return removed
}

// Preflight checks that the sandbox can build the pod network: it needs CAP_NET_ADMIN (to
// create links) and CAP_SYS_ADMIN (to create network namespaces), and iproute2.
func Preflight() error {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return fmt.Errorf("reading /proc/self/status to check capabilities: %w", err)
	}
	var eff uint64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	const capNetAdmin, capSysAdmin = 12, 21
	if eff&(1<<capNetAdmin) == 0 || eff&(1<<capSysAdmin) == 0 {
		return fmt.Errorf("weft dev needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to give each pod its own network namespace; run it with sudo")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("weft dev needs the ip command (iproute2) to build the pod network; install it (apt-get install iproute2)")
	}
	return nil
}

// HostRuleComment marks a rule in the host's iptables as the local mesh's own, such as the
// control-plane outage the end-to-end tests inject. A start removes every rule carrying it:
// a run killed in the middle of a fault leaves the fault behind, and a REJECT of the xDS
// port a killed run left once failed every test of the next run on that machine.
const HostRuleComment = "weft-dev"

// HostRule returns the match arguments of an iptables rule (what follows -I/-A/-D CHAIN)
// with HostRuleComment added, so that Cleanup can find it.
func HostRule(args ...string) []string {
	return append([]string{"-m", "comment", "--comment", HostRuleComment}, args...)
}

// removeHostRules deletes every IPv4 and IPv6 rule, in any table, marked by HostRule,
// within 30 s (iptables -w waits for the xtables lock as long as another holder keeps it).
func removeHostRules(ctx context.Context) []string {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var removed []string
	for _, ipt := range []string{"iptables", "ip6tables"} {
		b, err := exec.CommandContext(ctx, ipt+"-save").Output()
		if err != nil {
			continue
		}
		for _, r := range markedRules(string(b)) {
			args := append([]string{"-w", "-t", r.table, "-D"}, r.spec...)
			if exec.CommandContext(ctx, ipt, args...).Run() == nil {
				removed = append(removed, fmt.Sprintf("%s rule -t %s %s", ipt, r.table, strings.Join(r.spec, " ")))
			}
		}
	}
	return removed
}

// savedRule is one rule of iptables-save's output: its table and what follows -A.
type savedRule struct {
	table string
	spec  []string
}

// markedRules returns the rules of an iptables-save dump whose comment is HostRuleComment.
// The marker has no spaces, so iptables-save prints it unquoted and the line splits on
// blanks into arguments that -D accepts as they are.
func markedRules(dump string) []savedRule {
	var out []savedRule
	table := ""
	for _, line := range strings.Split(dump, "\n") {
		if t, ok := strings.CutPrefix(line, "*"); ok {
			table = t
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "-A" {
			continue
		}
		for i := 1; i+1 < len(f); i++ {
			if f[i] == "--comment" && f[i+1] == HostRuleComment {
				out = append(out, savedRule{table: table, spec: f[1:]})
				break
			}
		}
	}
	return out
}
