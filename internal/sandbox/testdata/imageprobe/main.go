// Command imageprobe reports, as JSON in /data/result.json, what a container that runs from
// its image sees: who it runs as, where, with which args and env, and which of its root's
// files and mounts work. internal/sandbox's TestImageContainerRuns builds it into an image.
package main

import (
	"encoding/json"
	"os"
	"syscall"
)

func main() {
	out := map[string]any{}
	out["uid"], out["gid"] = os.Getuid(), os.Getgid()
	g, _ := syscall.Getgroups()
	out["groups"] = len(g)
	out["cwd"], _ = os.Getwd()
	out["args"] = os.Args[1:]
	out["FROM_IMAGE"], out["POD_VAR"], out["PATH"] = os.Getenv("FROM_IMAGE"), os.Getenv("POD_VAR"), os.Getenv("PATH")
	b, _ := os.ReadFile("/etc/resolv.conf")
	out["resolv"] = string(b)
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err == nil {
		out["netns_ino"] = st.Ino
	}
	out["root_write"] = errString(os.WriteFile("/rootwrite", []byte("x"), 0o644))
	out["devnull_write"] = errString(os.WriteFile("/dev/null", []byte("x"), 0o644))
	_, err := os.Stat("/usr/bin/env")
	out["host_visible"] = err == nil
	enc, _ := json.Marshal(out)
	if err := os.WriteFile("/data/result.json", enc, 0o644); err != nil {
		os.Stderr.WriteString(err.Error())
		os.Exit(1)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
