package main

// The resource metrics API (metrics.k8s.io), which the HPA reads for CPU and memory. On a real
// cluster metrics-server serves it from the kubelets. Here no kubelet runs: the pod runner
// starts one real process per pod and records its pid in <state>/<namespace>/<pod>/runner.json.
// This file samples those processes from /proc (CPU time and resident memory, as a kubelet
// would from the pod's cgroup) and serves them through metrics-server's API storage.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/klog/v2"
	openapicommon "k8s.io/kube-openapi/pkg/common"
	"k8s.io/metrics/pkg/apis/metrics"
	cmapiserver "sigs.k8s.io/custom-metrics-apiserver/pkg/apiserver"
	generatedcore "sigs.k8s.io/custom-metrics-apiserver/pkg/generated/openapi/core"
	generatedcustommetrics "sigs.k8s.io/custom-metrics-apiserver/pkg/generated/openapi/custommetrics"
	generatedexternalmetrics "sigs.k8s.io/custom-metrics-apiserver/pkg/generated/openapi/externalmetrics"
	metricsapi "sigs.k8s.io/metrics-server/pkg/api"
	generatedmetrics "sigs.k8s.io/metrics-server/pkg/api/generated/openapi"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat (100 on Linux).
const clockTicks = 100

type usage struct {
	cpuNanoCores int64
	memoryBytes  int64
	at           time.Time
	window       time.Duration
}

type procSample struct {
	pid   int
	ticks uint64
	at    time.Time
}

// procSampler reads every pod's process from /proc at a fixed period.
type procSampler struct {
	stateDir  string
	container string
	period    time.Duration

	mu    sync.Mutex
	last  map[types.UID]procSample
	usage map[types.UID]usage
}

type runnerFile struct {
	Pid int    `json:"pid"`
	UID string `json:"uid"`
}

func readTicks(pid int) (uint64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; the fields after it start past its ')'.
	s := string(raw)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[end+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	utime, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, err
	}
	stime, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, err
	}
	return utime + stime, nil
}

func readRSS(pid int) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(raw))
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/%d/statm: %q", pid, raw)
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, err
	}
	return pages * int64(os.Getpagesize()), nil
}

func (s *procSampler) sampleOnce() {
	files, _ := filepath.Glob(filepath.Join(s.stateDir, "*", "*", "runner.json"))
	now := time.Now()
	seen := map[types.UID]bool{}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		var r runnerFile
		if err := json.Unmarshal(raw, &r); err != nil || r.Pid <= 0 || r.UID == "" {
			continue
		}
		ticks, err := readTicks(r.Pid)
		if err != nil {
			continue
		}
		rss, err := readRSS(r.Pid)
		if err != nil {
			continue
		}
		uid := types.UID(r.UID)
		seen[uid] = true
		s.mu.Lock()
		prev, ok := s.last[uid]
		s.last[uid] = procSample{pid: r.Pid, ticks: ticks, at: now}
		if ok && prev.pid == r.Pid && now.After(prev.at) && ticks >= prev.ticks {
			window := now.Sub(prev.at)
			cores := float64(ticks-prev.ticks) / clockTicks / window.Seconds()
			s.usage[uid] = usage{cpuNanoCores: int64(cores * 1e9), memoryBytes: rss, at: now, window: window}
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	for uid := range s.last {
		if !seen[uid] {
			delete(s.last, uid)
			delete(s.usage, uid)
		}
	}
	s.mu.Unlock()
}

func (s *procSampler) run(ctx context.Context) {
	t := time.NewTicker(s.period)
	defer t.Stop()
	for {
		s.sampleOnce()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// GetPodMetrics answers for the pods whose process has been sampled twice; others are left out,
// as metrics-server leaves out pods it has no complete data for.
func (s *procSampler) GetPodMetrics(pods ...*metav1.PartialObjectMetadata) ([]metrics.PodMetrics, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]metrics.PodMetrics, 0, len(pods))
	for _, p := range pods {
		u, ok := s.usage[p.UID]
		if !ok {
			continue
		}
		out = append(out, metrics.PodMetrics{
			ObjectMeta: metav1.ObjectMeta{
				Name: p.Name, Namespace: p.Namespace, Labels: p.Labels,
				CreationTimestamp: metav1.NewTime(time.Now()),
			},
			Timestamp: metav1.NewTime(u.at),
			Window:    metav1.Duration{Duration: u.window},
			Containers: []metrics.ContainerMetrics{{
				Name: s.container,
				Usage: corev1.ResourceList{
					corev1.ResourceCPU:    *resource.NewScaledQuantity(u.cpuNanoCores, resource.Nano),
					corev1.ResourceMemory: *resource.NewQuantity(u.memoryBytes, resource.BinarySI),
				},
			}},
		})
	}
	return out, nil
}

// GetNodeMetrics: the Nodes are fake and have no usage of their own.
func (s *procSampler) GetNodeMetrics(nodes ...*corev1.Node) ([]metrics.NodeMetrics, error) {
	return nil, nil
}

// openAPIConfigs covers the custom, external and resource metrics types; the library's default
// covers only the first two.
func openAPIConfigs(title string) (*openapicommon.Config, *openapicommon.OpenAPIV3Config) {
	getters := []openapicommon.GetOpenAPIDefinitions{
		generatedcore.GetOpenAPIDefinitions,
		generatedcustommetrics.GetOpenAPIDefinitions,
		generatedexternalmetrics.GetOpenAPIDefinitions,
		generatedmetrics.GetOpenAPIDefinitions,
	}
	merged := func(ref openapicommon.ReferenceCallback) map[string]openapicommon.OpenAPIDefinition {
		defs := map[string]openapicommon.OpenAPIDefinition{}
		for _, g := range getters {
			for k, v := range g(ref) {
				defs[k] = v
			}
		}
		return defs
	}
	namer := openapinamer.NewDefinitionNamer(cmapiserver.Scheme, metricsapi.Scheme)
	v2 := genericapiserver.DefaultOpenAPIConfig(merged, namer)
	v2.Info.Title, v2.Info.Version = title, "1.0.0"
	v3 := genericapiserver.DefaultOpenAPIV3Config(merged, namer)
	v3.Info.Title, v3.Info.Version = title, "1.0.0"
	return v2, v3
}

// installResourceMetrics adds metrics.k8s.io to the adapter's server.
func (a *adapter) installResourceMetrics(ctx context.Context, server *genericapiserver.GenericAPIServer) error {
	cfg, err := a.ClientConfig()
	if err != nil {
		return err
	}
	mc, err := metadata.NewForConfig(cfg)
	if err != nil {
		return err
	}
	podInformer := metadatainformer.NewSharedInformerFactory(mc, 0).
		ForResource(corev1.SchemeGroupVersion.WithResource("pods"))
	informers, err := a.Informers()
	if err != nil {
		return err
	}
	nodeLister := informers.Core().V1().Nodes().Lister()
	sampler := &procSampler{
		stateDir: a.podRunnerState, container: a.containerName, period: 5 * time.Second,
		last: map[types.UID]procSample{}, usage: map[types.UID]usage{},
	}
	go podInformer.Informer().Run(ctx.Done())
	go sampler.run(ctx)
	klog.Infof("resource metrics (metrics.k8s.io) from the processes under %s, container %q", a.podRunnerState, a.containerName)
	return metricsapi.Install(sampler, podInformer.Lister(), nodeLister, server, nil)
}
