// Command wxpush-metrics-adapter serves custom.metrics.k8s.io (per-pod metrics)
// and external.metrics.k8s.io for the local control plane of scripts/cluster.sh.
//
// It reads the same rules as the chart's adapter values
// (charts/wxpush-operator/adapter/values-prometheus-adapter.yaml): each rule
// names a series, the labels that carry the namespace and the pod, the name the
// metric is served under and a PromQL template with <<.Series>>,
// <<.LabelMatchers>> and <<.GroupBy>>. Every request expands the template and
// asks Prometheus's HTTP API for the current value. There is no series
// discovery: the series name is the metric name at the front of seriesQuery.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	"k8s.io/metrics/pkg/apis/external_metrics"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider/helpers"
	"sigs.k8s.io/yaml"
)

// rule is one entry of the adapter's rules, in the chart's format.
type rule struct {
	SeriesQuery string `json:"seriesQuery"`
	Resources   struct {
		Overrides map[string]struct {
			Group    string `json:"group"`
			Resource string `json:"resource"`
		} `json:"overrides"`
	} `json:"resources"`
	Name struct {
		Matches string `json:"matches"`
		As      string `json:"as"`
	} `json:"name"`
	MetricsQuery string `json:"metricsQuery"`
}

// rulesFile accepts both layouts the chart ships: the adapter chart's values
// (rules.custom / rules.external) and the adapter's own config
// (rules / externalRules, as in the chart's adapter-rules ConfigMap).
type rulesFile struct {
	Rules         json.RawMessage `json:"rules"`
	ExternalRules []rule          `json:"externalRules"`
}

type valuesRules struct {
	Custom   []rule `json:"custom"`
	External []rule `json:"external"`
}

// compiled is a rule ready to serve.
type compiled struct {
	metric   string
	series   string
	query    *template.Template
	podLabel string
	nsLabel  string
}

var seriesName = regexp.MustCompile(`^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)

func loadRules(path string) (custom, external []compiled, err error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading rules %s: %w", path, err)
	}
	var file rulesFile
	if err := yaml.Unmarshal(raw, &file); err != nil {
		return nil, nil, fmt.Errorf("parsing rules %s: %w", path, err)
	}
	var customRules, externalRules []rule
	if len(file.Rules) > 0 && strings.HasPrefix(strings.TrimSpace(string(file.Rules)), "[") {
		if err := json.Unmarshal(file.Rules, &customRules); err != nil {
			return nil, nil, fmt.Errorf("parsing rules %s: rules: %w", path, err)
		}
		externalRules = file.ExternalRules
	} else if len(file.Rules) > 0 {
		var v valuesRules
		if err := json.Unmarshal(file.Rules, &v); err != nil {
			return nil, nil, fmt.Errorf("parsing rules %s: rules: %w", path, err)
		}
		customRules, externalRules = v.Custom, v.External
	}
	for i, r := range customRules {
		c, err := compile(r)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: custom rule %d: %w", path, i, err)
		}
		if c.podLabel == "" {
			return nil, nil, fmt.Errorf("%s: custom rule %d (%s): no label overrides resource pod; only pod metrics are served", path, i, c.metric)
		}
		custom = append(custom, c)
	}
	for i, r := range externalRules {
		c, err := compile(r)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: external rule %d: %w", path, i, err)
		}
		external = append(external, c)
	}
	if len(custom)+len(external) == 0 {
		return nil, nil, fmt.Errorf("%s: no rules found", path)
	}
	return custom, external, nil
}

func compile(r rule) (compiled, error) {
	m := seriesName.FindStringSubmatch(r.SeriesQuery)
	if m == nil {
		return compiled{}, fmt.Errorf("seriesQuery %q does not start with a metric name", r.SeriesQuery)
	}
	c := compiled{metric: r.Name.As, series: m[1]}
	if c.metric == "" {
		c.metric = c.series
	}
	if r.Name.Matches != "" {
		re, err := regexp.Compile(r.Name.Matches)
		if err != nil {
			return compiled{}, fmt.Errorf("name.matches %q: %w", r.Name.Matches, err)
		}
		if !re.MatchString(c.series) {
			return compiled{}, fmt.Errorf("name.matches %q does not match series %s", r.Name.Matches, c.series)
		}
	}
	for label, res := range r.Resources.Overrides {
		switch strings.ToLower(res.Resource) {
		case "pod", "pods":
			c.podLabel = label
		case "namespace", "namespaces":
			c.nsLabel = label
		}
	}
	t, err := template.New(c.metric).Delims("<<", ">>").Option("missingkey=error").Parse(r.MetricsQuery)
	if err != nil {
		return compiled{}, fmt.Errorf("metricsQuery %q: %w", r.MetricsQuery, err)
	}
	c.query = t
	return c, nil
}

func (c compiled) expand(matchers []string, groupBy string) (string, error) {
	var b strings.Builder
	err := c.query.Execute(&b, map[string]string{
		"Series":        c.series,
		"LabelMatchers": strings.Join(matchers, ","),
		"GroupBy":       groupBy,
	})
	return b.String(), err
}

// matchersFor turns a label selector into PromQL label matchers.
func matchersFor(sel labels.Selector) ([]string, error) {
	if sel == nil {
		return nil, nil
	}
	reqs, selectable := sel.Requirements()
	if !selectable {
		return nil, fmt.Errorf("selector %q selects nothing", sel.String())
	}
	var out []string
	for _, r := range reqs {
		vals := r.Values().List()
		quoted := make([]string, len(vals))
		for i, v := range vals {
			quoted[i] = regexp.QuoteMeta(v)
		}
		alt := strconv.Quote(strings.Join(quoted, "|"))
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals:
			out = append(out, r.Key()+"="+strconv.Quote(vals[0]))
		case selection.NotEquals:
			out = append(out, r.Key()+"!="+strconv.Quote(vals[0]))
		case selection.In:
			out = append(out, r.Key()+"=~"+alt)
		case selection.NotIn:
			out = append(out, r.Key()+"!~"+alt)
		case selection.Exists:
			out = append(out, r.Key()+`!=""`)
		case selection.DoesNotExist:
			out = append(out, r.Key()+`=""`)
		default:
			return nil, fmt.Errorf("selector operator %q is not supported", r.Operator())
		}
	}
	return out, nil
}

// sample is one element of an instant-query vector.
type sample struct {
	labels map[string]string
	value  float64
	at     time.Time
}

type promClient struct {
	base *url.URL
	http *http.Client
}

func (p promClient) query(ctx context.Context, q string) ([]sample, error) {
	u := *p.base
	u.Path = strings.TrimSuffix(u.Path, "/") + "/api/v1/query"
	u.RawQuery = url.Values{"query": {q}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("querying prometheus: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("prometheus answered %s with a body that is not its API's JSON: %w", resp.Status, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("prometheus refused %q: %s", q, body.Error)
	}
	if body.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %q gave a %s, not a vector", q, body.Data.ResultType)
	}
	out := make([]sample, 0, len(body.Data.Result))
	for _, r := range body.Data.Result {
		ts, ok := r.Value[0].(float64)
		str, ok2 := r.Value[1].(string)
		if !ok || !ok2 {
			return nil, fmt.Errorf("query %q: malformed sample %v", q, r.Value)
		}
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, fmt.Errorf("query %q: value %q: %w", q, str, err)
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		sec, frac := math.Modf(ts)
		out = append(out, sample{labels: r.Metric, value: v, at: time.Unix(int64(sec), int64(frac*1e9))})
	}
	return out, nil
}

func quantity(v float64) resource.Quantity {
	return *resource.NewMilliQuantity(int64(math.Round(v*1000)), resource.DecimalSI)
}

type metricsProvider struct {
	prom     promClient
	client   dynamic.Interface
	mapper   apimeta.RESTMapper
	custom   map[string]compiled
	external map[string]compiled
}

func (p *metricsProvider) ListAllMetrics() []provider.CustomMetricInfo {
	out := make([]provider.CustomMetricInfo, 0, len(p.custom))
	for name := range p.custom {
		out = append(out, provider.CustomMetricInfo{
			GroupResource: podsResource, Namespaced: true, Metric: name,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Metric < out[j].Metric })
	return out
}

func (p *metricsProvider) ListAllExternalMetrics() []provider.ExternalMetricInfo {
	out := make([]provider.ExternalMetricInfo, 0, len(p.external))
	for name := range p.external {
		out = append(out, provider.ExternalMetricInfo{Metric: name})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Metric < out[j].Metric })
	return out
}

var podsResource = schema.GroupResource{Resource: "pods"}

func (p *metricsProvider) customRule(info provider.CustomMetricInfo) (compiled, error) {
	c, ok := p.custom[info.Metric]
	if !ok || info.GroupResource.Resource != "pods" || info.GroupResource.Group != "" {
		return compiled{}, provider.NewMetricNotFoundError(info.GroupResource, info.Metric)
	}
	return c, nil
}

// podValues queries the rule's metric for the named pods of one namespace.
func (p *metricsProvider) podValues(ctx context.Context, c compiled, namespace string, pods []string, metricSelector labels.Selector) (map[string]sample, error) {
	quoted := make([]string, len(pods))
	for i, n := range pods {
		quoted[i] = regexp.QuoteMeta(n)
	}
	matchers, err := matchersFor(metricSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	if c.nsLabel != "" && namespace != "" {
		matchers = append(matchers, c.nsLabel+"="+strconv.Quote(namespace))
	}
	matchers = append(matchers, c.podLabel+"=~"+strconv.Quote(strings.Join(quoted, "|")))
	q, err := c.expand(matchers, c.podLabel)
	if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	samples, err := p.prom.query(ctx, q)
	if err != nil {
		return nil, apierrors.NewServiceUnavailable(err.Error())
	}
	out := make(map[string]sample, len(samples))
	for _, s := range samples {
		out[s.labels[c.podLabel]] = s
	}
	return out, nil
}

func (p *metricsProvider) value(name types.NamespacedName, info provider.CustomMetricInfo, metricSelector labels.Selector, s sample) (*custom_metrics.MetricValue, error) {
	ref, err := helpers.ReferenceFor(p.mapper, name, info)
	if err != nil {
		return nil, err
	}
	var sel *metav1.LabelSelector
	if metricSelector != nil && !metricSelector.Empty() {
		sel, err = metav1.ParseToLabelSelector(metricSelector.String())
		if err != nil {
			return nil, err
		}
	}
	return &custom_metrics.MetricValue{
		DescribedObject: ref,
		Metric:          custom_metrics.MetricIdentifier{Name: info.Metric, Selector: sel},
		Timestamp:       metav1.NewTime(s.at),
		Value:           quantity(s.value),
	}, nil
}

func (p *metricsProvider) GetMetricByName(ctx context.Context, name types.NamespacedName, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValue, error) {
	c, err := p.customRule(info)
	if err != nil {
		return nil, err
	}
	vals, err := p.podValues(ctx, c, name.Namespace, []string{name.Name}, metricSelector)
	if err != nil {
		return nil, err
	}
	s, ok := vals[name.Name]
	if !ok {
		return nil, provider.NewMetricNotFoundForError(info.GroupResource, info.Metric, name.Name)
	}
	return p.value(name, info, metricSelector, s)
}

func (p *metricsProvider) GetMetricBySelector(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, metricSelector labels.Selector) (*custom_metrics.MetricValueList, error) {
	c, err := p.customRule(info)
	if err != nil {
		return nil, err
	}
	names, err := helpers.ListObjectNames(p.mapper, p.client, namespace, selector, info)
	if err != nil {
		return nil, err
	}
	list := &custom_metrics.MetricValueList{Items: []custom_metrics.MetricValue{}}
	if len(names) == 0 {
		return list, nil
	}
	vals, err := p.podValues(ctx, c, namespace, names, metricSelector)
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	for _, n := range names {
		s, ok := vals[n]
		if !ok {
			continue
		}
		v, err := p.value(types.NamespacedName{Namespace: namespace, Name: n}, info, metricSelector, s)
		if err != nil {
			return nil, err
		}
		list.Items = append(list.Items, *v)
	}
	return list, nil
}

func (p *metricsProvider) GetExternalMetric(ctx context.Context, namespace string, metricSelector labels.Selector, info provider.ExternalMetricInfo) (*external_metrics.ExternalMetricValueList, error) {
	c, ok := p.external[info.Metric]
	if !ok {
		return nil, provider.NewMetricNotFoundError(podsResource, info.Metric)
	}
	matchers, err := matchersFor(metricSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	groupBy := ""
	if c.nsLabel != "" && namespace != "" {
		matchers = append(matchers, c.nsLabel+"="+strconv.Quote(namespace))
		groupBy = c.nsLabel
	}
	q, err := c.expand(matchers, groupBy)
	if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	samples, err := p.prom.query(ctx, q)
	if err != nil {
		return nil, apierrors.NewServiceUnavailable(err.Error())
	}
	list := &external_metrics.ExternalMetricValueList{Items: []external_metrics.ExternalMetricValue{}}
	for _, s := range samples {
		list.Items = append(list.Items, external_metrics.ExternalMetricValue{
			MetricName:   info.Metric,
			MetricLabels: s.labels,
			Timestamp:    metav1.NewTime(s.at),
			Value:        quantity(s.value),
		})
	}
	return list, nil
}

type adapter struct {
	basecmd.AdapterBase
	rulesPath      string
	prometheusURL  string
	podRunnerState string
	containerName  string
}

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()

	a := &adapter{}
	a.Name = "wxpush-metrics-adapter"
	a.Flags().StringVar(&a.rulesPath, "rules", "", "rules file: the chart's adapter values or an adapter config with rules/externalRules")
	a.Flags().StringVar(&a.prometheusURL, "prometheus-url", "", "base URL of the Prometheus to query")
	a.Flags().StringVar(&a.podRunnerState, "pod-runner-state", "", "the pod runner's state dir; when set, metrics.k8s.io is served from the processes it records")
	a.Flags().StringVar(&a.containerName, "container-name", "pusher", "the container name resource metrics are reported under")
	logs.AddFlags(a.Flags())
	if err := a.Flags().Parse(os.Args); err != nil {
		klog.Fatalf("flags: %v", err)
	}
	if a.rulesPath == "" || a.prometheusURL == "" {
		klog.Fatalf("--rules and --prometheus-url are required")
	}
	base, err := url.Parse(a.prometheusURL)
	if err != nil || base.Scheme == "" || base.Host == "" {
		klog.Fatalf("--prometheus-url %q is not an absolute URL", a.prometheusURL)
	}
	custom, external, err := loadRules(a.rulesPath)
	if err != nil {
		klog.Fatalf("%v", err)
	}
	client, err := a.DynamicClient()
	if err != nil {
		klog.Fatalf("dynamic client: %v", err)
	}
	mapper, err := a.RESTMapper()
	if err != nil {
		klog.Fatalf("REST mapper: %v", err)
	}
	p := &metricsProvider{
		prom:     promClient{base: base, http: &http.Client{Timeout: 10 * time.Second}},
		client:   client,
		mapper:   mapper,
		custom:   map[string]compiled{},
		external: map[string]compiled{},
	}
	for _, c := range custom {
		p.custom[c.metric] = c
		klog.Infof("custom metric %s (pods) from series %s", c.metric, c.series)
	}
	for _, c := range external {
		p.external[c.metric] = c
		klog.Infof("external metric %s from series %s", c.metric, c.series)
	}
	a.WithCustomMetrics(p)
	a.WithExternalMetrics(p)
	ctx := context.Background()
	if a.podRunnerState != "" {
		a.OpenAPIConfig, a.OpenAPIV3Config = openAPIConfigs(a.Name)
		server, err := a.Server()
		if err != nil {
			klog.Fatalf("adapter: %v", err)
		}
		if err := a.installResourceMetrics(ctx, server.GenericAPIServer); err != nil {
			klog.Fatalf("resource metrics: %v", err)
		}
	}
	if err := a.Run(ctx); err != nil {
		klog.Fatalf("adapter: %v", err)
	}
}
