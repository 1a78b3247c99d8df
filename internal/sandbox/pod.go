package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// containerState is what the node agent knows about one container; status.go turns it into
// a ContainerStatus.
type containerState struct {
	spec corev1.Container
	// sidecar marks a restartable init container (a native sidecar): it starts before, and
	// stops after, the pod's containers.
	sidecar bool
	// runOnce marks a regular init container: it runs to completion, in order, before the
	// native sidecars and containers after it start.
	runOnce    bool
	running    bool
	pid        int
	startedAt  time.Time
	everRan    bool
	started    bool // the startup probe passed since the process started (or there is none)
	ready      bool
	restarts   int32
	waiting    string // reason while not running
	message    string
	lastExit   *corev1.ContainerStateTerminated
	terminated *corev1.ContainerStateTerminated
	done       chan struct{} // closed when the current process exits
}

// podRuntime runs one Pod's containers as processes in the Pod's network namespace.
type podRuntime struct {
	a       *Agent
	pod     *corev1.Pod // as first seen; spec does not change
	net     *PodNet
	started time.Time
	logDir  string

	mu         sync.Mutex
	containers []*containerState
	stopping   bool

	changed      chan struct{}
	finished     chan struct{} // closed after teardown: no more status writes
	teardownOnce sync.Once
	ctx          context.Context
	cancel       context.CancelFunc
	wg           sync.WaitGroup
}

func (r *podRuntime) key() string { return r.pod.Namespace + "/" + r.pod.Name }

func (r *podRuntime) notify() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// start launches every container with its supervisor and readiness prober.
func (r *podRuntime) start() {
	r.logDir = filepath.Join(r.a.opts.StateDir, "pods", r.pod.Namespace+"_"+r.pod.Name)
	_ = os.MkdirAll(r.logDir, 0o755)
	var inits, mains []*containerState
	for i := range r.pod.Spec.InitContainers {
		c := r.pod.Spec.InitContainers[i]
		restartable := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		cs := &containerState{spec: c, sidecar: restartable, runOnce: !restartable, waiting: "PodInitializing"}
		inits = append(inits, cs)
		r.containers = append(r.containers, cs)
	}
	for i := range r.pod.Spec.Containers {
		cs := &containerState{spec: r.pod.Spec.Containers[i], waiting: "ContainerCreating"}
		if len(inits) > 0 {
			cs.waiting = "PodInitializing"
		}
		mains = append(mains, cs)
		r.containers = append(r.containers, cs)
	}
	launch := func(cs *containerState) {
		r.wg.Add(1)
		go func() { defer r.wg.Done(); r.supervise(cs) }()
		if cs.spec.StartupProbe != nil {
			r.wg.Add(1)
			go func() { defer r.wg.Done(); r.probe(cs, true) }()
		}
		if cs.spec.ReadinessProbe != nil {
			r.wg.Add(1)
			go func() { defer r.wg.Done(); r.probe(cs, false) }()
		}
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		// Like the kubelet, init containers go in order: a regular one must exit 0, a native
		// sidecar must run and have passed its startup probe (if it has one), before the next
		// starts; the pod's containers start after the last. Readiness is not awaited (a
		// sidecar's readiness may depend on the app it fronts). So weft-init's capture rules
		// are in place before the sidecar and the app run.
		for _, cs := range inits {
			if cs.runOnce {
				if !r.runToCompletion(cs) {
					return
				}
				continue
			}
			launch(cs)
			if !r.waitStarted([]*containerState{cs}) {
				return
			}
		}
		for _, cs := range mains {
			launch(cs)
		}
	}()
	r.notify()
}

// waitStarted polls until every given container runs and has passed its startup probe,
// or the pod stops.
func (r *podRuntime) waitStarted(css []*containerState) bool {
	for {
		r.mu.Lock()
		ok := true
		for _, cs := range css {
			if !cs.running || !cs.started {
				ok = false
			}
		}
		r.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-r.ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (r *podRuntime) env(c *corev1.Container) ([]string, error) {
	env, err := containerEnv(r.pod, c, r.net.IP.String(), r.a.hostIP, masterServiceEnv(r.a.opts.APIService))
	if err != nil {
		return nil, err
	}
	return append(env, "PATH="+os.Getenv("PATH"), EnvMarker+"="+r.a.opts.StateDir), nil
}

// supervise runs a container's process and restarts it (restartPolicy Always, the only one
// Deployments use) with a doubling back-off, until the pod stops.
func (r *podRuntime) supervise(cs *containerState) {
	backoff := newRestartBackoff(containerRestartInitial)
	for {
		started := time.Now()
		err := r.run(cs)
		delay := backoff.after(time.Since(started))
		if r.ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		if err != nil {
			cs.waiting, cs.message = waitingReason(err), err.Error()
		} else {
			cs.waiting, cs.message = "CrashLoopBackOff", fmt.Sprintf("back-off %s restarting failed container %s", delay, cs.spec.Name)
		}
		r.mu.Unlock()
		r.notify()
		if r.pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
			return
		}
		select {
		case <-r.ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// errImage marks a failure to map the image, reported as ErrImagePull.
type errImage struct{ error }

func waitingReason(err error) string {
	var ie errImage
	if errors.As(err, &ie) {
		return "ErrImagePull"
	}
	return "CreateContainerConfigError"
}

// run starts the container's process and waits for it to exit. An error means it could not
// start at all.
func (r *podRuntime) run(cs *containerState) error {
	c := &cs.spec
	cmd, err := r.command(c)
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(r.logDir, c.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening log of container %s: %w", c.Name, err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	r.mu.Lock()
	if r.stopping {
		r.mu.Unlock()
		return nil
	}
	if err := cmd.Start(); err != nil {
		r.mu.Unlock()
		return fmt.Errorf("starting %s for container %s: %w", strings.Join(cmd.Args, " "), c.Name, err)
	}
	if cs.everRan {
		cs.restarts++
	}
	cs.running, cs.everRan, cs.pid, cs.startedAt = true, true, cmd.Process.Pid, time.Now()
	cs.waiting, cs.message, cs.ready, cs.started = "", "", c.ReadinessProbe == nil, c.StartupProbe == nil
	cs.done = make(chan struct{})
	done := cs.done
	r.mu.Unlock()
	r.notify()

	werr := cmd.Wait()
	code := int32(0)
	if cmd.ProcessState != nil {
		code = int32(cmd.ProcessState.ExitCode())
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int32(ws.Signal())
		}
	}
	reason := "Completed"
	if werr != nil || code != 0 {
		reason = "Error"
	}
	r.mu.Lock()
	cs.running, cs.ready, cs.started, cs.pid = false, false, false, 0
	cs.lastExit = &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason,
		StartedAt: metaTime(cs.startedAt), FinishedAt: metaTime(time.Now())}
	if r.stopping {
		cs.terminated = cs.lastExit
	}
	r.mu.Unlock()
	close(done)
	r.notify()
	return nil
}

// probe runs the container's startup or readiness probe on its schedule while the pod
// lives. As with the kubelet, readiness is probed only once the startup probe passed, and
// a passed startup probe is not run again until the container restarts.
func (r *podRuntime) probe(cs *containerState, startup bool) {
	p := cs.spec.ReadinessProbe
	if startup {
		p = cs.spec.StartupProbe
	}
	h := probeHandler(p)
	period := secondsOr(p.PeriodSeconds, 10)
	timeout := secondsOr(p.TimeoutSeconds, 1)
	successes, failures := 0, 0
	wait := time.Duration(p.InitialDelaySeconds) * time.Second
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = period
		r.mu.Lock()
		due := cs.running && cs.started != startup
		r.mu.Unlock()
		if !due {
			successes, failures = 0, 0
			continue
		}
		env, _ := r.env(&cs.spec)
		ctx, cancel := context.WithTimeout(r.ctx, timeout)
		err := h.run(ctx, &cs.spec, r.net.Netns, r.net.IP.String(), env)
		cancel()
		r.mu.Lock()
		if startup {
			if err == nil && cs.running {
				cs.started = true
				r.mu.Unlock()
				r.notify()
			} else {
				r.mu.Unlock()
			}
			continue
		}
		was := cs.ready
		if err == nil {
			successes, failures = successes+1, 0
			if successes >= threshold(p.SuccessThreshold, 1) {
				cs.ready = cs.running
			}
		} else {
			successes, failures = 0, failures+1
			if failures >= threshold(p.FailureThreshold, 3) {
				cs.ready = false
			}
		}
		now := cs.ready
		r.mu.Unlock()
		if was != now {
			r.notify()
		}
	}
}

// stop runs the preStop hooks, then SIGTERM, then SIGKILL at the end of the grace period,
// the kubelet's order. It returns when every process has exited.
func (r *podRuntime) stop(grace time.Duration) {
	deadline := time.Now().Add(grace)
	r.mu.Lock()
	r.stopping = true
	r.mu.Unlock()
	r.cancel() // no more restarts or probes
	var mains, sidecars []*containerState
	for _, cs := range r.containers {
		if cs.sidecar {
			sidecars = append(sidecars, cs)
		} else {
			mains = append(mains, cs)
		}
	}
	// The kubelet stops the pod's containers first and its native sidecars after them, so a
	// sidecar keeps carrying the app's traffic while the app shuts down.
	r.stopGroup(mains, deadline)
	r.stopGroup(sidecars, deadline)
	r.wg.Wait()
}

// stopGroup runs the preStop hooks of css, then SIGTERM, then SIGKILL at deadline.
func (r *podRuntime) stopGroup(css []*containerState, deadline time.Time) {
	hctx, cancel := context.WithDeadline(context.Background(), deadline)
	var hooks sync.WaitGroup
	for _, cs := range css {
		if lc := cs.spec.Lifecycle; lc != nil && lc.PreStop != nil && r.isRunning(cs) {
			hooks.Add(1)
			go func() {
				defer hooks.Done()
				env, _ := r.env(&cs.spec)
				if err := hookHandler(lc.PreStop).run(hctx, &cs.spec, r.net.Netns, r.net.IP.String(), env); err != nil {
					r.a.log.Info("preStop hook failed", "pod", r.key(), "container", cs.spec.Name, "err", err)
				}
			}()
		}
	}
	hooks.Wait()
	cancel()
	r.signal(css, syscall.SIGTERM)
	for _, cs := range css {
		r.mu.Lock()
		done := cs.done
		r.mu.Unlock()
		if done == nil {
			continue
		}
		select {
		case <-done:
		case <-time.After(time.Until(deadline)):
			r.signal(css, syscall.SIGKILL)
			<-done
		}
	}
}

func (r *podRuntime) isRunning(cs *containerState) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return cs.running
}

// signal signals the process groups of the given running containers.
func (r *podRuntime) signal(css []*containerState, sig syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, cs := range css {
		if cs.running && cs.pid > 0 {
			_ = syscall.Kill(-cs.pid, sig)
		}
	}
}
