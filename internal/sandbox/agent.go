package sandbox

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
)

// AgentOptions configure the node agent.
type AgentOptions struct {
	NodeName string
	StateDir string
	// DNS gives pods the cluster's resolv.conf (dns.go); nil leaves them the host's.
	DNS *PodDNS
	// APIService is the `kubernetes` Service's ClusterIP and port (10.96.0.1:443), given to
	// every container as KUBERNETES_SERVICE_HOST/PORT as the kubelet does; zero gives none.
	APIService netip.AddrPort
}

// Agent is the sandbox's kubelet and scheduler in one: it registers a Node, binds every
// unscheduled Pod to it, runs each Pod's containers as processes in their own network
// namespace, reports truthful Pod status and stops Pods the way the kubelet does.
type Agent struct {
	opts   AgentOptions
	cs     kubernetes.Interface
	net    *Network
	images *Images
	log    logr.Logger
	hostIP string

	mu   sync.Mutex
	pods map[string]*podRuntime // by namespace/name
	q    workqueue.TypedRateLimitingInterface[string]
	ix   cache.Indexer
}

// NewAgent wires an agent; Run starts it.
func NewAgent(opts AgentOptions, cs kubernetes.Interface, net *Network, images *Images, log logr.Logger) *Agent {
	return &Agent{opts: opts, cs: cs, net: net, images: images, log: log, hostIP: net.Gateway().String(),
		pods: map[string]*podRuntime{},
		q:    workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())}
}

// Run registers the Node and serves Pods until ctx ends, then stops every Pod it runs.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.registerNode(ctx); err != nil {
		return err
	}
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := a.heartbeat(ctx); err != nil && ctx.Err() == nil {
					a.log.Error(err, "node heartbeat failed")
				}
			}
		}
	}()
	factory := informers.NewSharedInformerFactory(a.cs, 0)
	inf := factory.Core().V1().Pods().Informer()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			a.q.Add(key)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue,
		UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue}); err != nil {
		return fmt.Errorf("watching pods: %w", err)
	}
	a.ix = inf.GetIndexer()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return ctx.Err()
	}
	for range 2 {
		go func() {
			for a.processNext(ctx) {
			}
		}()
	}
	<-ctx.Done()
	a.q.ShutDown()
	a.stopAll()
	return nil
}

func (a *Agent) processNext(ctx context.Context) bool {
	key, quit := a.q.Get()
	if quit {
		return false
	}
	defer a.q.Done(key)
	if err := a.sync(ctx, key); err != nil {
		if ctx.Err() == nil {
			a.log.Error(err, "syncing pod; will retry", "pod", key)
		}
		a.q.AddRateLimited(key)
		return true
	}
	a.q.Forget(key)
	return true
}

func (a *Agent) sync(ctx context.Context, key string) error {
	obj, exists, err := a.ix.GetByKey(key)
	if err != nil {
		return err
	}
	a.mu.Lock()
	rt := a.pods[key]
	a.mu.Unlock()
	if !exists {
		if rt != nil && rt.pod.DeletionTimestamp == nil { // force-deleted: no grace
			go a.teardown(rt, 0, false)
		}
		return nil
	}
	pod := obj.(*corev1.Pod)
	if rt != nil && rt.pod.UID != pod.UID { // replaced by a new pod of the same name
		go a.teardown(rt, 0, false)
		rt = nil
	}
	switch {
	case pod.Spec.NodeName == "" && pod.DeletionTimestamp == nil:
		return a.bind(ctx, pod)
	case pod.Spec.NodeName != a.opts.NodeName:
		return nil
	case pod.DeletionTimestamp != nil:
		if rt == nil {
			return a.forceDelete(ctx, pod)
		}
		rt.mu.Lock()
		already := rt.stopping
		rt.mu.Unlock()
		if !already {
			grace := 30 * time.Second
			if pod.DeletionGracePeriodSeconds != nil {
				grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
			}
			go a.teardown(rt, grace, true)
		}
		return nil
	case rt == nil && pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed:
		return a.startPod(ctx, pod)
	}
	return nil
}

// bind is the whole scheduler: every pod goes to the one node.
func (a *Agent) bind(ctx context.Context, pod *corev1.Pod) error {
	b := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
		Target: corev1.ObjectReference{Kind: "Node", Name: a.opts.NodeName}}
	if err := a.cs.CoreV1().Pods(pod.Namespace).Bind(ctx, b, metav1.CreateOptions{}); err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		return fmt.Errorf("binding pod %s/%s to node %s: %w", pod.Namespace, pod.Name, a.opts.NodeName, err)
	}
	return nil
}

func (a *Agent) startPod(ctx context.Context, pod *corev1.Pod) error {
	var resolv string
	if a.opts.DNS != nil {
		var err error
		if resolv, err = ResolvConf(pod, *a.opts.DNS); err != nil {
			return fmt.Errorf("the DNS configuration of pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
	}
	pn, err := a.net.Add(ctx, string(pod.UID))
	if err != nil {
		return err
	}
	if err := writeNetnsResolvConf(pn.Netns, resolv); err != nil {
		a.net.Remove(context.WithoutCancel(ctx), pn)
		return err
	}
	rctx, cancel := context.WithCancel(context.Background())
	rt := &podRuntime{a: a, pod: pod.DeepCopy(), net: pn, started: time.Now(), changed: make(chan struct{}, 1), finished: make(chan struct{}), ctx: rctx, cancel: cancel}
	a.mu.Lock()
	a.pods[pod.Namespace+"/"+pod.Name] = rt
	a.mu.Unlock()
	if err := rt.prepareVolumes(ctx); err != nil {
		a.log.Error(err, "writing projected volumes", "pod", rt.key())
	}
	go a.writeStatus(rt)
	rt.start()
	a.log.Info("pod started", "pod", rt.key(), "ip", pn.IP.String(), "netns", pn.Netns)
	return nil
}

// writeStatus pushes the runtime's status whenever it changes, skipping no-op writes.
func (a *Agent) writeStatus(rt *podRuntime) {
	var last *corev1.PodStatus
	for {
		select {
		case <-rt.finished:
			return
		case <-rt.changed:
		}
		err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cur, err := a.cs.CoreV1().Pods(rt.pod.Namespace).Get(ctx, rt.pod.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if cur.UID != rt.pod.UID {
				return nil
			}
			st := rt.status(cur.Status)
			if last != nil && equality.Semantic.DeepEqual(*last, st) && equality.Semantic.DeepEqual(cur.Status, st) {
				return nil
			}
			cur.Status = st
			if _, err := a.cs.CoreV1().Pods(cur.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
				return err
			}
			last = &st
			return nil
		})
		if err != nil && !apierrors.IsNotFound(err) {
			a.log.Error(err, "writing pod status", "pod", rt.key())
		}
	}
}

// teardown stops a pod's processes (gracefully when graceful), removes its network and,
// for a pod being deleted, removes the object as the kubelet does once its containers are gone.
func (a *Agent) teardown(rt *podRuntime, grace time.Duration, graceful bool) {
	rt.teardownOnce.Do(func() { a.doTeardown(rt, grace, graceful) })
}

func (a *Agent) doTeardown(rt *podRuntime, grace time.Duration, graceful bool) {
	if graceful {
		rt.notify() // Ready=false while draining
	}
	rt.stop(grace)
	rt.removeRoots()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a.net.Remove(ctx, rt.net)
	a.mu.Lock()
	if a.pods[rt.key()] == rt {
		delete(a.pods, rt.key())
	}
	a.mu.Unlock()
	close(rt.finished)
	if graceful {
		if err := a.forceDelete(ctx, rt.pod); err != nil {
			a.log.Error(err, "removing stopped pod", "pod", rt.key())
		}
	}
	a.log.Info("pod stopped", "pod", rt.key())
}

func (a *Agent) forceDelete(ctx context.Context, pod *corev1.Pod) error {
	err := a.cs.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptrTo(int64(0)), Preconditions: &metav1.Preconditions{UID: &pod.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("deleting stopped pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// stopAll stops every pod at shutdown, gracefully but briefly, in parallel.
func (a *Agent) stopAll() {
	a.mu.Lock()
	rts := make([]*podRuntime, 0, len(a.pods))
	for _, rt := range a.pods {
		rts = append(rts, rt)
	}
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, rt := range rts {
		wg.Add(1)
		go func() { defer wg.Done(); a.teardown(rt, 3*time.Second, false) }()
	}
	wg.Wait()
}
