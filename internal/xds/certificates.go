package xds

import (
	"context"
	"errors"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/ca"
)

// The certificate service (contract.CertificateService) issues workload certificates on
// the ADS port. The server's interceptor has verified the caller's projected token before
// Sign runs, and the certificate names that token's namespace and ServiceAccount, whatever
// the CSR asks for (docs/mtls.md).

func init() { encoding.RegisterCodec(contract.SignalCodec{}) }

// NamespaceLabels reads a namespace's labels (the manager's cached client); nil: none.
type NamespaceLabels func(ctx context.Context, namespace string) (map[string]string, error)

// CertificateOptions configures the certificate service; every field may be left zero.
type CertificateOptions struct {
	Clock clock.PassiveClock
	// NamespaceLabels lets a namespace's weft.dev/mtls label set its workloads' mode.
	NamespaceLabels NamespaceLabels
	Log             logr.Logger
	// Recorder, when set, records a Warning event (reason CertificateNotIssued) on the
	// verified pod whose certificate request was refused or failed, so `kubectl describe pod`
	// says why its sidecar has no workload certificate. The events API aggregates repeats
	// (a sidecar retries with back-off from 1 s to 30 s).
	Recorder events.EventRecorder
}

// ReasonCertificateNotIssued is the reason of the pod event for a refused or failed request.
const ReasonCertificateNotIssued = "CertificateNotIssued"

// RegisterCertificateServer serves contract.CertificateService on s with authority.
func RegisterCertificateServer(s grpc.ServiceRegistrar, authority *ca.CA, o CertificateOptions) {
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Log.GetSink() == nil {
		o.Log = logr.Discard()
	}
	s.RegisterService(&certificateServiceDesc, &certificateServer{ca: authority, clock: o.Clock, nsLabels: o.NamespaceLabels, log: o.Log, rec: o.Recorder})
}

type certificateHandler interface {
	Sign(ctx context.Context, in *contract.SignRequest) (*contract.SignResponse, error)
}

type certificateServer struct {
	ca       *ca.CA
	clock    clock.PassiveClock
	nsLabels NamespaceLabels
	log      logr.Logger
	rec      events.EventRecorder
}

// Sign issues a certificate to the verified caller. Without a verified identity (a server
// run with --xds-insecure) nothing is issued: a certificate is only as good as the
// identity behind it.
func (s *certificateServer) Sign(ctx context.Context, in *contract.SignRequest) (*contract.SignResponse, error) {
	id, ok := IdentityFrom(ctx)
	if !ok {
		return nil, status.Error(codes.FailedPrecondition,
			"weft control plane: workload certificates need an authenticated sidecar, and this manager runs with --xds-insecure")
	}
	res, err := s.sign(ctx, id, in)
	if err != nil && s.rec != nil {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: id.Namespace, Name: id.Pod, UID: id.UID}}
		pod.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Pod"))
		s.rec.Eventf(pod, nil, corev1.EventTypeWarning, ReasonCertificateNotIssued, "IssueWorkloadCertificate",
			"no workload certificate for this pod's sidecar: %s", status.Convert(err).Message())
	}
	return res, err
}

func (s *certificateServer) sign(ctx context.Context, id *Identity, in *contract.SignRequest) (*contract.SignResponse, error) {
	ttl := time.Duration(in.TTLSeconds) * time.Second
	if in.TTLSeconds < 0 || in.TTLSeconds > int64(365*24*time.Hour/time.Second) {
		return nil, status.Errorf(codes.InvalidArgument, "weft control plane: ttlSeconds %d out of range", in.TTLSeconds)
	}
	mode, err := s.modeOf(ctx, id)
	if err != nil {
		return nil, err
	}
	iss, err := s.ca.Sign([]byte(in.CSR), ca.Workload{Namespace: id.Namespace, ServiceAccount: id.ServiceAccount}, ttl, s.clock.Now())
	switch {
	case errors.Is(err, ca.ErrBadCSR):
		return nil, status.Errorf(codes.InvalidArgument, "weft control plane: %v", err)
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "weft control plane: %v", err)
	}
	s.log.V(1).Info("workload certificate issued", "pod", id.Namespace+"/"+id.Pod, "uri", iss.Cert.URIs[0].String(),
		"serial", iss.Cert.SerialNumber.Text(16), "notAfter", iss.Cert.NotAfter)
	return &contract.SignResponse{CertChain: string(iss.ChainPEM), TrustBundle: string(iss.BundlePEM), MTLSMode: mode}, nil
}

// modeOf is the workload's peer authentication mode: its pod's weft.dev/mtls label, else
// its namespace's, else permissive. A value that is not a mode is refused, so the user
// sees it in the sidecar's /ready instead of a silently weaker mode.
func (s *certificateServer) modeOf(ctx context.Context, id *Identity) (string, error) {
	v, ok := id.Labels[contract.LabelMTLS]
	where := "pod " + id.Namespace + "/" + id.Pod
	if !ok && s.nsLabels != nil {
		labels, err := s.nsLabels(ctx, id.Namespace)
		if err != nil {
			return "", status.Errorf(codes.Unavailable, "weft control plane: reading namespace %s: %v", id.Namespace, err)
		}
		v, where = labels[contract.LabelMTLS], "namespace "+id.Namespace
	}
	mode, err := contract.ParseMTLSMode(v)
	if err != nil {
		return "", status.Errorf(codes.FailedPrecondition, "weft control plane: label on %s: %v", where, err)
	}
	return mode, nil
}

var certificateServiceDesc = grpc.ServiceDesc{
	ServiceName: contract.CertificateService,
	HandlerType: (*certificateHandler)(nil),
	Methods: []grpc.MethodDesc{{MethodName: "Sign", Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
		in := new(contract.SignRequest)
		if err := dec(in); err != nil {
			return nil, err
		}
		h := srv.(certificateHandler)
		if icpt == nil {
			return h.Sign(ctx, in)
		}
		info := &grpc.UnaryServerInfo{Server: srv, FullMethod: contract.SignMethod}
		return icpt(ctx, in, info, func(ctx context.Context, req any) (any, error) {
			return h.Sign(ctx, req.(*contract.SignRequest))
		})
	}}},
	Metadata: "weft.identity.v1 (JSON codec " + contract.SignalCodecName + ")",
}
