package controllers

import (
	"net"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/weftmesh/weft/internal/xds"
)

// xdsNamespace and xdsOtherNamespace are the only namespaces the test manager watches, so
// the snapshot reconciler never writes status on the objects the CRD validation tests own.
// The second one holds the targets of cross-namespace references.
const (
	xdsNamespace      = "xds-test"
	xdsOtherNamespace = "xds-other"
)

// xdsServer is the real xDS server the test manager runs on 127.0.0.1.
var xdsServer *xds.Server

// startXDSManager runs a manager with the snapshot reconciler and the xDS server, as
// cmd/manager wires them, until the suite ends.
func startXDSManager() {
	for _, ns := range []string{xdsNamespace, xdsOtherNamespace} {
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{xdsNamespace: {}, xdsOtherNamespace: {}}},
	})
	Expect(err).NotTo(HaveOccurred())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	xc := xds.NewCache()
	r := NewSnapshotReconciler(mgr.GetClient(), mgr.GetAPIReader(), xc, mgr.Elected())
	xdsServer = xds.New(xc, secureXDSOptions(xds.Options{Listener: ln, OnChange: r.Notify, Log: ctrl.Log.WithName("xds")}))
	r.Nodes = xdsServer
	r.Recorder = mgr.GetEventRecorder("weft-snapshot")
	Expect(r.SetupWithManager(mgr)).To(Succeed())
	Expect(mgr.Add(xdsServer)).To(Succeed())
	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
	<-xdsServer.Ready()
}
