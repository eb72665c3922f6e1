#!/usr/bin/env python3
"""Offline checks of the Helm chart charts/wxpush-operator, with the real Helm library.

Renders the chart (helm-python-sdk: Helm v4's Go SDK as a shared library, no cluster, no `helm`
binary) with the defaults and every value set under tests/helm/values/, lints it strictly,
validates every rendered manifest against the Kubernetes 1.30 and 1.33 OpenAPI schemas
(kubernetes-validate, strict mode), checks that values.schema.json refuses each value set under
tests/helm/invalid/ naming the offending key, and checks the RBAC, the Deployment's flags, the
CRD copy, the prometheus-adapter rules and the Grafana dashboard against the sources they mirror.

Run with the .venv-helm interpreter (scripts/setup.sh makes it):

    .venv-helm/bin/python tests/helm/check_chart.py
    .venv-helm/bin/python tests/helm/check_chart.py --render [VALUES.yaml]   # objects as JSON

The last line is `N passed, M failed`; the exit status is non-zero when anything failed.
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml

try:
    import helm_python as helm
    import kubernetes_validate
except ImportError as e:  # pragma: no cover - environment problem, reported plainly
    print(f"missing Python package ({e}): run scripts/setup.sh, then use .venv-helm/bin/python")
    print("0 passed, 1 failed")
    sys.exit(2)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "wxpush-operator"
HERE = Path(__file__).resolve().parent
RELEASE = "wxpush-operator"
NAMESPACE = "wxpush-system"
KUBE_VERSIONS = ["1.30.0", "1.33.0"]

passed = 0
failed = 0
skipped: list[str] = []


def source(rel: str) -> Path:
    """A workspace source file; if the crates were restructured, the file with the same name (and
    the same last folders) elsewhere in the workspace."""
    path = ROOT / rel
    if path.exists():
        return path
    parts = Path(rel).parts
    for tail_len in range(len(parts) - 1, 0, -1):
        tail = "/".join(parts[-tail_len:])
        found = sorted(p for p in ROOT.glob(f"*/**/{tail}") if "target" not in p.parts and ".venv" not in str(p))
        if len(found) == 1:
            return found[0]
    raise AssertionError(f"{rel} not found in the workspace")


def check(name: str, fn: Callable[[], Any]) -> None:
    """Runs one check; an exception or a failed assert counts as a failure."""
    global passed, failed
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        failed += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        if not isinstance(e, AssertionError):
            traceback.print_exc(limit=3)
    else:
        passed += 1
        print(f"ok   {name}")


def load_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def render(values: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Renders the chart; returns the objects (CRDs from crds/ first) and the raw outputs."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        crds = chart.crds
    objs: list[dict[str, Any]] = []
    for crd in crds:
        objs.extend(d for d in yaml.safe_load_all(crd["data"]) if d)
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("_template", path)
                objs.append(doc)
    return objs, out


def clean(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "_template"}


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    dep = one(objs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


# --- what the sources say ------------------------------------------------------------------------

def operator_flags() -> set[str]:
    """The long flags of the operator's `struct Args` (operator/src/main.rs)."""
    src = source("operator/src/main.rs").read_text()
    body = src[src.index("struct Args"):]
    body = body[: body.index("\n}\n")]
    fields = re.findall(r"#\[arg\([^\]]*\blong\b[^\]]*\)\]\s*(?:///[^\n]*\n\s*)*(\w+):", body, re.S)
    assert fields, "no #[arg(long)] fields found in operator/src/main.rs"
    return {"--" + f.replace("_", "-") for f in fields}


def operator_rbac() -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, from operator/rbac.yaml."""
    docs = [d for d in yaml.safe_load_all(source("operator/rbac.yaml").read_text()) if d]
    doc = next(d for d in docs if d.get("kind") == "ClusterRole")
    allowed: dict[tuple[str, str], set[str]] = {}
    for rule in doc["rules"]:
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                allowed.setdefault((g, r), set()).update(rule["verbs"])
    return allowed


# PodMonitors are never deleted by the operator (garbage collection follows the owner reference).
PODMONITOR_RULE = {("monitoring.coreos.com", "podmonitors"): {"list", "watch", "create", "patch"}}
CLUSTER_WIDE_ONLY = {("wxpush.io", "pushchannels"), ("wxpush.io", "pushchannels/status")}
LEASES = ("coordination.k8s.io", "leases")
SECRETS = ("", "secrets")


def grants(obj: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in obj.get("rules", []):
        for g in rule.get("apiGroups", []):
            for r in rule.get("resources", []):
                out.setdefault((g, r), set()).update(rule.get("verbs", []))
    return out


def pusher_metric_names() -> set[str]:
    src = "".join(p.read_text() for p in sorted((ROOT / "pusher/src/metrics").glob("*.rs")))
    return set(re.findall(r"`(wxpush_[a-z_]+)", src))


# --- the checks ----------------------------------------------------------------------------------

def check_lint(values: dict[str, Any], label: str) -> None:
    for kv in KUBE_VERSIONS:
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{kv}")
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        assert not report["errors"] and not bad, f"lint {label} k8s {kv}: {report}"
        info = [m["error"] for m in report["messages"] if m["severity"] < 2]
        if info:
            print(f"     lint {label} k8s {kv} info: {'; '.join(sorted(set(info)))}")


def check_kube_validate(objs: list[dict[str, Any]], label: str) -> None:
    problems = []
    for o in objs:
        for kv in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(clean(o), kv, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                note = f"{o['apiVersion']} {o['kind']} (no schema in kubernetes-validate {kv})"
                if note not in skipped:
                    skipped.append(note)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{o['kind']}/{o['metadata'].get('name')} k8s {kv}: {e.message} at {list(e.path)}")
    assert not problems, "\n  ".join(problems)


def check_common(objs: list[dict[str, Any]]) -> None:
    """Properties every value set must keep."""
    flags = operator_flags()
    c = container(objs)
    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    for arg in c["args"]:
        flag = arg.split("=", 1)[0]
        assert flag in flags, f"{flag} is not a flag of the operator's struct Args ({sorted(flags)})"
    env = env_of(c)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    main_rs = source("operator/src/main.rs").read_text()
    for name in env:
        if name.startswith("WXPUSH_OPERATOR_"):
            assert name in main_rs or name in (
                "WXPUSH_OPERATOR_WATCH_NAMESPACES", "WXPUSH_OPERATOR_ALLOWED_IMAGES"), name
    args = dict(a.split("=", 1) if "=" in a else (a, "") for a in c["args"])
    assert args["--lease-namespace"] == NAMESPACE
    assert args["--listen"] == "0.0.0.0:8080"
    (port,) = c["ports"]
    assert port == {"name": "metrics", "containerPort": 8080, "protocol": "TCP"}, port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532 and sc["runAsGroup"] == 65532
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    # At least as strict as the pusher the operator builds.
    workload = source("operator/src/reconcile/build/workload.rs").read_text()
    for field, want in (("allow_privilege_escalation", "Some(false)"),
                        ("read_only_root_filesystem", "Some(true)"),
                        ("run_as_non_root", "Some(true)")):
        if f"{field}: {want}" in workload:
            key = re.sub(r"_(\w)", lambda m: m.group(1).upper(), field)
            assert sc[key] == (want == "Some(true)"), key
    svc = one(objs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # Least privilege: every rule is one operator/rbac.yaml lists (or PodMonitors), no wildcard,
    # no CRD access, and the pushchannel rights only in a ClusterRole.
    allowed = {**operator_rbac(), **PODMONITOR_RULE}
    for o in of_kind(objs, "ClusterRole") + of_kind(objs, "Role"):
        for key, verbs in grants(o).items():
            assert "*" not in key and "*" not in verbs, f"wildcard in {o['kind']}/{o['metadata']['name']}"
            assert key in allowed, f"{o['kind']}/{o['metadata']['name']} grants {key} not in operator/rbac.yaml"
            assert verbs <= allowed[key], f"{o['kind']}/{o['metadata']['name']} {key}: {verbs - allowed[key]} beyond operator/rbac.yaml"
            if key in CLUSTER_WIDE_ONLY:
                assert o["kind"] == "ClusterRole", key
            if key == LEASES:
                assert o["kind"] == "Role" and o["metadata"]["namespace"] == NAMESPACE, \
                    f"leases granted by {o['kind']}/{o['metadata']['name']} outside {NAMESPACE}"
    for b in of_kind(objs, "ClusterRoleBinding") + of_kind(objs, "RoleBinding"):
        (subject,) = b["subjects"]
        assert subject == {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}, subject
        kind = b["roleRef"]["kind"]
        target = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == b["roleRef"]["name"]
                  and o["metadata"].get("namespace") == b["metadata"].get("namespace")]
        assert target, f"{b['kind']}/{b['metadata']['name']} binds a missing {kind}"
    # Every right the operator needs is granted somewhere.
    union: dict[tuple[str, str], set[str]] = {}
    for o in of_kind(objs, "ClusterRole") + of_kind(objs, "Role"):
        for key, verbs in grants(o).items():
            union.setdefault(key, set()).update(verbs)
    # KEDA and prometheus-operator rights are optional (rbac.keda, rbac.podMonitors).
    return_needed = {k: v for k, v in operator_rbac().items() if k[0] not in ("keda.sh", "monitoring.coreos.com")}
    for key, verbs in return_needed.items():
        assert verbs <= union.get(key, set()), f"{key} {verbs} not granted (has {union.get(key)})"


def check_rbac_namespaced(objs: list[dict[str, Any]], watched: list[str]) -> None:
    for cr in of_kind(objs, "ClusterRole"):
        g = grants(cr)
        assert SECRETS not in g, f"ClusterRole/{cr['metadata']['name']} grants secrets"
        assert set(g) <= CLUSTER_WIDE_ONLY, f"ClusterRole/{cr['metadata']['name']} grants {set(g) - CLUSTER_WIDE_ONLY}"
    secret_ns = sorted(r["metadata"]["namespace"] for r in of_kind(objs, "Role") if SECRETS in grants(r))
    assert secret_ns == sorted(watched), f"secrets granted in {secret_ns}, watched {watched}"
    namespaced = {k: v for k, v in operator_rbac().items() if k not in CLUSTER_WIDE_ONLY and k != LEASES}
    for ns in watched:
        roles = [r for r in of_kind(objs, "Role") if r["metadata"]["namespace"] == ns]
        assert roles, f"no Role in {ns}"
        g: dict[tuple[str, str], set[str]] = {}
        for r in roles:
            for k, v in grants(r).items():
                g.setdefault(k, set()).update(v)
        for key, verbs in namespaced.items():
            assert verbs <= g.get(key, set()), f"{ns}: {key} {verbs} missing"
        assert LEASES not in g or ns == NAMESPACE
        assert [b for b in of_kind(objs, "RoleBinding") if b["metadata"]["namespace"] == ns], f"no RoleBinding in {ns}"
    lease_roles = [r for r in of_kind(objs, "Role") if LEASES in grants(r)]
    assert [r["metadata"]["namespace"] for r in lease_roles] == [NAMESPACE], lease_roles


def check_rbac_cluster(objs: list[dict[str, Any]]) -> None:
    roles = [r for r in of_kind(objs, "Role") if r["metadata"]["namespace"] != NAMESPACE]
    assert not roles, "Roles outside the release namespace without watchNamespaces"
    secrets = [cr["metadata"]["name"] for cr in of_kind(objs, "ClusterRole") if SECRETS in grants(cr)]
    assert secrets == [RELEASE], secrets
    lease_roles = [r for r in of_kind(objs, "Role") if LEASES in grants(r)]
    assert [r["metadata"]["namespace"] for r in lease_roles] == [NAMESPACE], lease_roles


def check_adapter_rules(objs: list[dict[str, Any]], chart_values: dict[str, Any]) -> None:
    snippet = load_values(CHART / "adapter/values-prometheus-adapter.yaml")
    rules = chart_values["prometheusAdapter"]["rules"]
    assert snippet["rules"]["custom"] == rules["custom"], "adapter snippet custom != values.yaml"
    assert snippet["rules"]["external"] == rules["external"], "adapter snippet external != values.yaml"
    cm = [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-adapter-rules")]
    assert len(cm) == 1, "adapter rules ConfigMap missing"
    config = yaml.safe_load(cm[0]["data"]["config.yaml"])
    assert config == {"rules": rules["custom"], "externalRules": rules["external"]}, config
    # The names and labels the HPA uses (operator/src/reconcile/build/autoscaler.rs).
    src = source("operator/src/reconcile/build/autoscaler.rs").read_text()
    assert re.search(r'type_: "Pods".*?name: "wxpush_inflight_requests"', src, re.S)
    assert re.search(r'type_: "External".*?name: "wxpush_queue_messages"', src, re.S)
    ext_labels = re.search(r'name: "wxpush_queue_messages".*?BTreeMap::from\(\[(.*?)\]\)', src, re.S)
    assert ext_labels, "selector of wxpush_queue_messages not found"
    label_names = re.findall(r'\("(\w+)"\.into\(\)', ext_labels.group(1))
    assert sorted(label_names) == ["channel", "state"], label_names
    (custom,) = rules["custom"]
    (external,) = rules["external"]
    assert custom["name"]["as"] == "wxpush_inflight_requests"
    assert re.match(custom["name"]["matches"], "wxpush_inflight_requests")
    assert custom["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert custom["seriesQuery"].startswith("wxpush_inflight_requests{")
    assert external["name"]["as"] == "wxpush_queue_messages"
    assert external["resources"]["overrides"] == {"namespace": {"resource": "namespace"}}
    assert external["seriesQuery"].startswith("wxpush_queue_messages{")
    for label in label_names:
        assert f'{label}!=""' in external["seriesQuery"], f"series without {label} would be served"
        assert label in external["metricsQuery"], f"{label} is aggregated away by the metricsQuery"
    # The machine-readable PromQL (adapter/queries.yaml) is the rules' expansion.
    q = load_values(CHART / "adapter/queries.yaml")
    ex = q["example"]
    by_metric = {(e["source"], e["metric"]): e for e in q["queries"]}
    for rule in (custom, external):
        e = by_metric[("prometheus-adapter", rule["name"]["as"])]
        assert e["seriesQuery"] == rule["seriesQuery"] and e["metricsQuery"] == rule["metricsQuery"]
        expanded = (rule["metricsQuery"].replace("<<.Series>>", rule["name"]["as"])
                    .replace("<<.LabelMatchers>>", e["labelMatchers"]).replace("<<.GroupBy>>", e["groupBy"]))
        assert expanded == e["expanded"], (expanded, e["expanded"])
        assert f'namespace="{ex["namespace"]}"' in e["labelMatchers"]
    assert 'channel="order-notify",state="ready"' in by_metric[("prometheus-adapter", "wxpush_queue_messages")]["labelMatchers"]
    # The KEDA trigger queries, as the operator formats them.
    selector = f'channel="{ex["channel"]}",namespace="{ex["namespace"]}"'
    fmts = [raw or plain for raw, plain in re.findall(r'format!\((?:r#"(.*?)"#|"((?:[^"\\]|\\.)*)")', src)]
    fmts = [f for f in fmts if re.match(r"(sum|max)\(wxpush_", f)]
    assert len(fmts) == 2, fmts
    keda = sorted(f.replace("{selector}", selector).replace("{{", "{").replace("}}", "}") for f in fmts)
    want = sorted(e["expanded"] for e in q["queries"] if e["source"] == "keda")
    assert keda == want, (keda, want)


def check_dashboard(objs: list[dict[str, Any]]) -> None:
    cm = [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    assert len(cm) == 1, "dashboard ConfigMap missing"
    assert cm[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm[0]["metadata"]["namespace"] == "monitoring"
    shipped = json.loads(cm[0]["data"]["wxpush.json"])
    assert shipped == json.loads((CHART / "dashboards/wxpush.json").read_text())
    exprs = [t["expr"] for p in shipped["panels"] for t in p["targets"]]
    known = pusher_metric_names()
    for expr in exprs:
        for m in re.findall(r"\b(wxpush_[a-z_]+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            assert m in known or base in known or m + "_total" in known, f"{m} is not a pusher metric ({expr})"
    text = "\n".join(exprs)
    for needle in ("rate(wxpush_messages_completed_total", "histogram_quantile(",
                   "wxpush_delivery_latency_seconds_bucket", "wxpush_send_attempts_total",
                   "by (channel, state) (wxpush_queue_messages", "wxpush_circuit_state",
                   "wxpush_token_requests_total", "kube_deployment_status_replicas"):
        assert needle in text, f"no panel queries {needle}"


def main() -> int:
    print(f"helm-python-sdk {helm.__version__}, Helm SDK {helm.helm_sdk_version()}, "
          f"kubernetes-validate for Kubernetes {', '.join(KUBE_VERSIONS)}")
    chart_values = load_values(CHART / "values.yaml")

    def crd_identical() -> None:
        a = (ROOT / "crds/pushchannel.yaml").read_bytes()
        b = (CHART / "crds/pushchannel.yaml").read_bytes()
        assert a == b, "charts/wxpush-operator/crds/pushchannel.yaml differs from crds/pushchannel.yaml: copy it again"
        with helm.Chart.load(CHART) as chart:
            (crd,) = chart.crds
            assert crd["data"].encode() == a
    check("chart crds/ is identical to crds/pushchannel.yaml", crd_identical)

    def metadata() -> None:
        with helm.Chart.load(CHART) as chart:
            md = chart.metadata
            assert chart.name == "wxpush-operator" and chart.version == "0.1.0"
            assert md["apiVersion"] == "v2" and md["appVersion"] == "0.1.0", md
            assert chart.values == chart_values
            assert chart.schema and chart.schema["$schema"].startswith("http://json-schema.org/draft-07/")
    check("Chart.yaml metadata, values and draft-07 schema load", metadata)

    def packaged() -> None:
        import tarfile
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(helm.package(CHART, destination=tmp))
            assert archive.name == "wxpush-operator-0.1.0.tgz", archive
            with tarfile.open(archive) as tar:
                names = set(tar.getnames())
            for need in ["Chart.yaml", "values.yaml", "values.schema.json", "crds/pushchannel.yaml",
                         "templates/deployment.yaml"]:
                assert f"wxpush-operator/{need}" in names, (need, sorted(names))
            with helm.Chart.load(archive) as chart:
                assert chart.name == "wxpush-operator" and chart.version == "0.1.0"
    check("helm package makes wxpush-operator-0.1.0.tgz, which loads", packaged)

    def schema_strict() -> None:
        with helm.Chart.load(CHART) as chart:
            schema = chart.schema

        def walk(node: Any, path: str) -> None:
            if isinstance(node, dict):
                if node.get("type") == "object" and "properties" in node:
                    assert node.get("additionalProperties") is False, f"{path}: additionalProperties is not false"
                    for k, v in node["properties"].items():
                        assert v.get("type"), f"{path}.{k}: no type"
                        walk(v, f"{path}.{k}")
                for key in ("items", "additionalProperties"):
                    if isinstance(node.get(key), dict):
                        walk(node[key], f"{path}[]")
        walk(schema, "$")

        def covered(vals: Any, sch: dict[str, Any], path: str) -> None:
            if isinstance(vals, dict) and "properties" in sch:
                for k, v in vals.items():
                    assert k in sch["properties"], f"{path}.{k} not in the schema"
                    covered(v, sch["properties"][k], f"{path}.{k}")
        covered(chart_values, schema, "$")
    check("values.schema.json: additionalProperties false and a type everywhere", schema_strict)

    def documented() -> None:
        lines = (CHART / "values.yaml").read_text().splitlines()
        rule_list_indent: int | None = None  # inside prometheusAdapter.rules.custom/external items
        for i, line in enumerate(lines):
            m = re.match(r"^(\s*)(- )?([A-Za-z]\w*):", line)
            if not m:
                continue
            indent = len(m.group(1))
            if rule_list_indent is not None and indent > rule_list_indent:
                continue  # a rule's own fields, documented by the list's comment
            rule_list_indent = None
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            assert j >= 0 and lines[j].strip().startswith("#"), \
                f"values.yaml line {i + 1}: {line.strip()} has no comment above it"
            if m.group(3) in ("custom", "external"):
                rule_list_indent = indent
    check("values.yaml: every key commented", documented)

    for path in sorted((HERE / "invalid").glob("*.yaml")):
        text = path.read_text()
        values = load_values(path)
        m = re.search(r"#\s*expect:\s*(\S+)", text)
        mr = re.search(r"#\s*expect-render:\s*(\S+)", text)

        def refused(values: dict[str, Any] = values, key: str | None = m and m.group(1)) -> None:
            with helm.Chart.load(CHART) as chart:
                try:
                    chart.validate_schema(values)
                except helm.HelmValuesError as e:
                    msg = str(e)
                else:
                    raise AssertionError("the schema accepted it")
                assert key and key in msg, f"message does not name {key}: {msg}"
                print(f"     refused: {msg.strip().splitlines()[-1][:160]}")
                # An install would refuse it too.
                try:
                    chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
                except helm.HelmError:
                    pass
                else:
                    raise AssertionError("render accepted values the schema refuses")

        def render_refused(values: dict[str, Any] = values, key: str | None = mr and mr.group(1)) -> None:
            with helm.Chart.load(CHART) as chart:
                chart.validate_schema(values)
                try:
                    chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
                except helm.HelmError as e:
                    msg = str(e)
                else:
                    raise AssertionError("render accepted it")
                assert key and key in msg, f"message does not name {key}: {msg}"
                print(f"     refused: {msg.strip().splitlines()[-1][:160]}")

        if mr:
            check(f"render refuses invalid/{path.name}", render_refused)
        else:
            check(f"schema refuses invalid/{path.name}", refused)

    for path in sorted((HERE / "values").glob("*.yaml")):
        label = path.stem
        values = load_values(path)
        state: dict[str, Any] = {}

        def do_render(values: dict[str, Any] = values, state: dict[str, Any] = state) -> None:
            state["objs"], state["raw"] = render(values)
            kinds = sorted({o["kind"] for o in state["objs"]})
            print(f"     {len(state['objs'])} objects: {', '.join(kinds)}")
        check(f"[{label}] renders", do_render)
        if "objs" not in state:
            continue
        objs = state["objs"]
        merged = {**chart_values, **values}
        check(f"[{label}] helm lint --strict (k8s {', '.join(KUBE_VERSIONS)})",
              lambda values=values, label=label: check_lint(values, label))
        check(f"[{label}] kubernetes-validate --strict (k8s {', '.join(KUBE_VERSIONS)})",
              lambda objs=objs, label=label: check_kube_validate(objs, label))
        check(f"[{label}] Deployment flags, probes, securityContext; least-privilege RBAC",
              lambda objs=objs: check_common(objs))
        watched = merged.get("watchNamespaces") or []
        if watched:
            check(f"[{label}] RBAC: secrets only in Roles of {watched}, no ClusterRole grants them; leases only in {NAMESPACE}",
                  lambda objs=objs, watched=watched: check_rbac_namespaced(objs, watched))
        else:
            check(f"[{label}] RBAC: ClusterRole for all namespaces; leases only in a Role in {NAMESPACE}",
                  lambda objs=objs: check_rbac_cluster(objs))

        def specifics(objs: list[dict[str, Any]] = objs, label: str = label, values: dict[str, Any] = values,
                      raw: dict[str, str] = state["raw"]) -> None:
            c = container(objs)
            args = dict(a.split("=", 1) if "=" in a else (a, "") for a in c["args"])
            env = env_of(c)
            dep = one(objs, "Deployment")
            pdbs = of_kind(objs, "PodDisruptionBudget")
            notes = next(v for k, v in raw.items() if k.endswith("NOTES.txt"))
            for needle in ("create secret generic", "examples/pushchannel-minimal.yaml", "get pch"):
                assert needle in notes, f"NOTES.txt lacks {needle}"
            if label == "default":
                assert dep["spec"]["replicas"] == 1 and not pdbs
                assert c["image"] == "ghcr.io/wxpush/wxpush-operator:0.1.0"
                assert args["--pusher-image"] == "ghcr.io/wxpush/wxpush-pusher:0.1.0"
                assert args["--leader-election"] == "true"
                assert "--namespace" not in args and "WXPUSH_OPERATOR_WATCH_NAMESPACES" not in env
                assert "WXPUSH_OPERATOR_ALLOWED_IMAGES" not in env and "--log-json" not in args
                assert "--check-credentials" not in args, "on by default: the operator's own default"
                for kind in ("ServiceMonitor", "ConfigMap", "PrometheusRule"):
                    assert not of_kind(objs, kind), f"{kind} rendered by default"
                union = set().union(*(grants(o) for o in of_kind(objs, "ClusterRole")))
                assert ("keda.sh", "scaledobjects") in union and ("monitoring.coreos.com", "podmonitors") in union
                assert ("monitoring.coreos.com", "prometheusrules") in union
            elif label == "namespaced":
                assert "--namespace" not in args, "--namespace takes a single namespace"
                assert env["WXPUSH_OPERATOR_WATCH_NAMESPACES"] == "shop,billing"
                assert env["WXPUSH_OPERATOR_ALLOWED_IMAGES"] == ",".join(values["allowedPusherImages"])
            elif label in ("single-namespace", "keda"):
                assert args["--namespace"] == "shop"
                assert env["WXPUSH_OPERATOR_WATCH_NAMESPACES"] == "shop"
                if label == "keda":
                    (role,) = [r for r in of_kind(objs, "Role") if r["metadata"]["namespace"] == "shop"]
                    assert grants(role)[("keda.sh", "scaledobjects")] == {"get", "list", "watch", "create", "patch", "delete"}
                    assert not [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-adapter-rules")]
            elif label == "ha":
                assert dep["spec"]["replicas"] == 2
                assert args["--leader-election"] == "true" and args["--lease-name"] == "wxpush-operator-ha"
                assert args["--lease-duration"] == "20s"
                (pdb,) = pdbs
                assert pdb["spec"]["minAvailable"] == 1
                assert pdb["spec"]["selector"] == dep["spec"]["selector"]
                assert dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
            elif label == "monitoring":
                sm = one(objs, "ServiceMonitor")
                assert sm["apiVersion"] == "monitoring.coreos.com/v1"
                assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
                (ep,) = sm["spec"]["endpoints"]
                assert ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["interval"] == "15s"
                svc = one(objs, "Service")
                assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
                assert "--log-json" in args
                assert args["--check-credentials"] == "false"
                check_adapter_rules(objs, chart_values)
                check_dashboard(objs)
                pr = one(objs, "PrometheusRule")
                assert pr["apiVersion"] == "monitoring.coreos.com/v1"
                assert pr["metadata"]["labels"]["release"] == "kube-prometheus-stack"
                rules = yaml.safe_load((CHART / "alerts" / "wxpush.rules.yaml").read_text())
                assert pr["spec"] == rules, "the PrometheusRule is alerts/wxpush.rules.yaml as is"
            elif label == "no-keda":
                union = set().union(*(grants(o) for o in of_kind(objs, "ClusterRole")))
                assert ("keda.sh", "scaledobjects") not in union
                assert ("monitoring.coreos.com", "podmonitors") not in union
                assert ("monitoring.coreos.com", "prometheusrules") not in union
            else:
                raise AssertionError(f"no specific checks for value set {label}")
        check(f"[{label}] value-set specifics", specifics)

    if skipped:
        print("note: not validated by kubernetes-validate, which has no schema for these custom "
              "resources: " + "; ".join(skipped))
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def render_mode(values_file: str | None) -> int:
    """`--render [VALUES]`: print the rendered objects (CRDs first, then the templates) as one
    JSON list, for tests that apply the chart (tests/tests/helm_install.rs)."""
    values = load_values(Path(values_file)) if values_file else {}
    objs, _ = render(values)
    print(json.dumps([clean(o) for o in objs]))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        sys.exit(render_mode(sys.argv[2] if len(sys.argv) > 2 else None))
    sys.exit(main())
