{{- define "imageserver-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "imageserver-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "imageserver-operator.labels" -}}
{{ include "imageserver-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The namespaces watched when not cluster-wide: the listed ones, or the release's. */}}
{{- define "imageserver-operator.namespaces" -}}
{{- if .Values.watch.namespaces -}}
{{- toJson .Values.watch.namespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* Exactly what the operator does in a watched namespace (see the chart's README). */}}
{{- define "imageserver-operator.rules" -}}
# ImageServers: watched; annotated (drains, incidents, last action); version set on rollback.
- apiGroups: [imageserver.dev]
  resources: [imageservers]
  verbs: [get, list, watch, patch]
- apiGroups: [imageserver.dev]
  resources: [imageservers/status]
  verbs: [patch]
# One Postmortem per incident, created then updated.
- apiGroups: [imageserver.dev]
  resources: [postmortems]
  verbs: [get, create, patch]
# Children: watched, server-side applied (an apply that creates needs `create`), pruned.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors, prometheusrules]
  verbs: [list, watch, create, patch, delete]
# Every action is explained in an Event on the ImageServer.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Each ImageServer's storage token, created once; never read back, so no get, list or watch.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
{{- with .Values.slack.tokenSecrets }}
# The Slack tokens, by name: no list, no other Secret.
- apiGroups: [""]
  resources: [secrets]
  resourceNames: {{ toJson . }}
  verbs: [get]
{{- end }}
{{- end -}}
