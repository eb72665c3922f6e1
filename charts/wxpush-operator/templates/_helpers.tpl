{{/* Chart name. */}}
{{- define "wxpush-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: RELEASE-NAME, or RELEASE when it already contains the chart name. */}}
{{- define "wxpush-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "wxpush-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "wxpush-operator.labels" -}}
helm.sh/chart: {{ include "wxpush-operator.chart" . }}
{{ include "wxpush-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: wxpush
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of the operator pods. */}}
{{- define "wxpush-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wxpush-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wxpush-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wxpush-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wxpush-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "wxpush-operator.pusherImage" -}}
{{- printf "%s:%s" .Values.pusherImage.repository (default .Chart.AppVersion .Values.pusherImage.tag) }}
{{- end }}

{{/* "true" when leader election is on. Several replicas without it would reconcile twice. */}}
{{- define "wxpush-operator.leaderElection" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "leaderElection.enabled must be true when replicaCount is above 1 (only the leader may reconcile)" }}
{{- end }}
{{- if .Values.leaderElection.enabled }}true{{ end }}
{{- end }}

{{/*
The rules the operator needs on the namespaced objects it writes or reads for each PushChannel,
taken verbatim from operator/rbac.yaml. Used by the ClusterRole (all namespaces) or by one Role
per watched namespace.
*/}}
{{- define "wxpush-operator.namespacedRules" -}}
# Children, written by server-side apply (patch; create for the first apply) and watched
# (metadata only) so that a deleted or edited child is restored.
- apiGroups: [""]
  resources: [configmaps, services, persistentvolumeclaims]
  verbs: [list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch]
# The Ingress in front of /wechat/events, when a PushChannel asks for one (get and delete:
# removed when the PushChannel stops asking).
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [get, create, patch, delete]
# Autoscalers are also deleted when autoscaling is switched off or moves between HPA and KEDA.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
{{- if .Values.rbac.keda }}
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]
{{- end }}
{{- if .Values.rbac.podMonitors }}
# PodMonitors and PrometheusRules (the alerts) for the pushers, when monitoring.coreos.com is
# served (applied, watched; never deleted by the operator: garbage collection follows their
# owner reference).
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors, prometheusrules]
  verbs: [list, watch, create, patch]
{{- end }}
# Referenced Secrets: get to check that the named keys exist (values are dropped at once and
# never logged or written); list/watch of metadata only, to react to rotation.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
