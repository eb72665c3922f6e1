package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"
)

// The chart's adapter values are the rules scripts/cluster.sh serves.
const chartRules = "../../../charts/wxpush-operator/adapter/values-prometheus-adapter.yaml"

func TestChartRulesExpandToThePromQLTheChartDocuments(t *testing.T) {
	custom, external, err := loadRules(chartRules)
	if err != nil {
		t.Fatal(err)
	}
	if len(custom) != 1 || custom[0].metric != "wxpush_inflight_requests" || custom[0].podLabel != "pod" || custom[0].nsLabel != "namespace" {
		t.Fatalf("custom rules: %+v", custom)
	}
	if len(external) != 1 || external[0].metric != "wxpush_queue_messages" || external[0].nsLabel != "namespace" {
		t.Fatalf("external rules: %+v", external)
	}
	q, err := custom[0].expand([]string{`namespace="ns"`, `pod=~"a|b"`}, "pod")
	if err != nil {
		t.Fatal(err)
	}
	if want := `sum(wxpush_inflight_requests{namespace="ns",pod=~"a|b"}) by (pod)`; q != want {
		t.Fatalf("got %s, want %s", q, want)
	}
	q, err = external[0].expand([]string{`channel="c"`, `namespace="ns"`}, "namespace")
	if err != nil {
		t.Fatal(err)
	}
	if want := `max(wxpush_queue_messages{channel="c",namespace="ns"}) by (channel, state)`; q != want {
		t.Fatalf("got %s, want %s", q, want)
	}
}

func TestAdapterConfigLayoutIsReadToo(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yaml")
	config := `rules:
  - seriesQuery: 'up{namespace!="",pod!=""}'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    name: {as: up_now}
    metricsQuery: max(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
externalRules: []
`
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	custom, external, err := loadRules(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(custom) != 1 || custom[0].metric != "up_now" || custom[0].series != "up" || len(external) != 0 {
		t.Fatalf("custom %+v external %+v", custom, external)
	}
}

func TestRulesWithoutAPodLabelOrWithABadTemplateAreRefused(t *testing.T) {
	for name, body := range map[string]string{
		"no pod label": "rules:\n  custom:\n    - seriesQuery: 'x{namespace!=\"\"}'\n      resources: {overrides: {namespace: {resource: namespace}}}\n      metricsQuery: sum(<<.Series>>)\n",
		"bad template": "rules:\n  external:\n    - seriesQuery: 'x'\n      metricsQuery: sum(<<.Series\n",
		"no rules":     "prometheus: {url: http://x}\n",
	} {
		file := filepath.Join(t.TempDir(), "rules.yaml")
		if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := loadRules(file); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSelectorsBecomeLabelMatchers(t *testing.T) {
	sel, err := labels.Parse("channel=c.1,state in (ready,delayed),!gone,kept,mode notin (x)")
	if err != nil {
		t.Fatal(err)
	}
	got, err := matchersFor(sel)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		`channel="c.1"`:          true,
		`state=~"delayed|ready"`: true,
		`gone=""`:                true,
		`kept!=""`:               true,
		`mode!~"x"`:              true,
	}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for _, m := range got {
		if !want[m] {
			t.Errorf("unexpected matcher %s (all: %v)", m, got)
		}
	}
}

func TestPrometheusAnswersAreReadAndNaNIsDropped(t *testing.T) {
	var asked string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = r.URL.Query().Get("query")
		_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"vector","result":[
			{"metric":{"pod":"a"},"value":[1700000000.5,"2.5"]},
			{"metric":{"pod":"b"},"value":[1700000000.5,"NaN"]}]}}`))
	}))
	defer srv.Close()
	base, _ := url.Parse(srv.URL)
	p := promClient{base: base, http: &http.Client{Timeout: 5 * time.Second}}
	got, err := p.query(context.Background(), `up{pod="a"}`)
	if err != nil {
		t.Fatal(err)
	}
	if asked != `up{pod="a"}` {
		t.Fatalf("asked %q", asked)
	}
	if len(got) != 1 || got[0].labels["pod"] != "a" || got[0].value != 2.5 || got[0].at.Unix() != 1700000000 {
		t.Fatalf("got %+v", got)
	}
	if q := quantity(2.5); q.String() != "2500m" {
		t.Fatalf("quantity %s", q.String())
	}
}

func TestPrometheusErrorsAreReported(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"status":"error","errorType":"bad_data","error":"parse error"}`))
	}))
	defer srv.Close()
	base, _ := url.Parse(srv.URL)
	p := promClient{base: base, http: &http.Client{Timeout: 5 * time.Second}}
	if _, err := p.query(context.Background(), "sum("); err == nil {
		t.Fatal("a refused query gave no error")
	}
}

func TestProcessCPUTimeIsRead(t *testing.T) {
	ticks, err := readTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Spin until the kernel has charged this process at least one more tick.
	deadline := time.Now().Add(5 * time.Second)
	for {
		now, err := readTicks(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if now > ticks {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CPU time stayed at %d ticks while spinning", ticks)
		}
	}
	rss, err := readRSS(os.Getpid())
	if err != nil || rss <= 0 {
		t.Fatalf("rss %d, %v", rss, err)
	}
}
