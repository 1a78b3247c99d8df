//go:build !linux

package main

import "runtime/debug"

// releaseStartupMemory returns the heap garbage start-up left; dropping the binary's
// pages is Linux-only.
func releaseStartupMemory() (int, error) {
	debug.FreeOSMemory()
	return 0, nil
}
