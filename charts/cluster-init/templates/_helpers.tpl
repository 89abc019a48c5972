{{/*
Names, labels, and the checks and conversions the templates share.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "cluster-init.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RELEASE-NAME, or fullnameOverride; 63 characters at most (DNS label). */}}
{{- define "cluster-init.fullname" -}}
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

{{- define "cluster-init.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "cluster-init.labels" -}}
helm.sh/chart: {{ include "cluster-init.chart" . }}
{{ include "cluster-init.selectorLabels" . }}
app.kubernetes.io/version: {{ include "cluster-init.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the pods: they never change across upgrades. */}}
{{- define "cluster-init.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cluster-init.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cluster-init.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cluster-init.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cluster-init.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion | toString }}
{{- end }}

{{/*
A whole number from values: numbers reach templates as float64, and `toString` would print
1e+06 for a million.
*/}}
{{- define "cluster-init.int" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}

{{/*
CLUSTER_INIT_WORKERS: `max`, `N` or `max-K`, given as a number or a string. The schema checks
it too; this check also holds under --skip-schema-validation.
*/}}
{{- define "cluster-init.workers" -}}
{{- $w := include "cluster-init.int" .Values.workers }}
{{- if not (regexMatch "^(max|max-[1-9][0-9]*|[1-9][0-9]*)$" $w) }}
{{- fail (printf "workers must be max, a whole number N >= 1, or max-K with K >= 1; got %q" (toString .Values.workers)) }}
{{- end }}
{{- $w }}
{{- end }}

{{/* Whether workers depends on the CPU budget (max or max-K). */}}
{{- define "cluster-init.workersFromCpus" -}}
{{- if hasPrefix "max" (include "cluster-init.workers" .) }}true{{ end }}
{{- end }}

{{/* Whether resources.limits.cpu is set. */}}
{{- define "cluster-init.hasCpuLimit" -}}
{{- if and .Values.resources .Values.resources.limits .Values.resources.limits.cpu }}true{{ end }}
{{- end }}

{{/* Whether resources.requests.cpu is set (Kubernetes defaults the request to the limit). */}}
{{- define "cluster-init.hasCpuRequest" -}}
{{- if or (include "cluster-init.hasCpuLimit" .) (and .Values.resources .Values.resources.requests .Values.resources.requests.cpu) }}true{{ end }}
{{- end }}

{{/*
Checks across values that the schema cannot express. Included once, by the Deployment.
*/}}
{{- define "cluster-init.checks" -}}
{{- $stop := int64 .Values.stopTimeoutSeconds }}
{{- $sleep := int64 .Values.preStopSleepSeconds }}
{{- $grace := int64 .Values.terminationGracePeriodSeconds }}
{{- if le $grace (add $stop $sleep) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than stopTimeoutSeconds (%d) + preStopSleepSeconds (%d) = %d: Kubernetes would SIGKILL the pod before cluster-init's stop timeout ends" $grace $stop $sleep (add $stop $sleep)) }}
{{- end }}
{{- if eq (int64 .Values.containerPort) (int64 .Values.admin.port) }}
{{- fail (printf "admin.port (%d) must differ from containerPort" (int64 .Values.admin.port)) }}
{{- end }}
{{- if and .Values.cpuFromRequests .Values.cpus }}
{{- fail "set cpuFromRequests or cpus, not both" }}
{{- end }}
{{- if and .Values.cpuFromRequests (not (include "cluster-init.hasCpuRequest" .)) }}
{{- fail "cpuFromRequests needs resources.requests.cpu (or resources.limits.cpu)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (include "cluster-init.hasCpuRequest" .)) }}
{{- fail "autoscaling on CPU utilisation needs resources.requests.cpu" }}
{{- end }}
{{- if .Values.podDisruptionBudget.enabled }}
{{- $min := toString .Values.podDisruptionBudget.minAvailable }}
{{- $max := toString .Values.podDisruptionBudget.maxUnavailable }}
{{- if eq (empty $min) (empty $max) }}
{{- fail "podDisruptionBudget: set exactly one of minAvailable and maxUnavailable" }}
{{- end }}
{{- end }}
{{- end }}

{{/* OTEL_RESOURCE_ATTRIBUTES: the pod's identity from the Downward API, then the user's. */}}
{{- define "cluster-init.otelResourceAttributes" -}}
{{- $attrs := list "k8s.pod.name=$(POD_NAME)" "k8s.namespace.name=$(POD_NAMESPACE)" "k8s.node.name=$(NODE_NAME)" (printf "k8s.deployment.name=%s" (include "cluster-init.fullname" .)) "k8s.container.name=server" }}
{{- range $k, $v := .Values.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k (toString $v)) }}
{{- end }}
{{- join "," $attrs }}
{{- end }}

{{/* An int-or-string field: `2` stays a number, `50%` a string. */}}
{{- define "cluster-init.intOrPercent" -}}
{{- if kindIs "string" . }}{{ . | quote }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}

{{/* A quantity from values: `2` (not 2.0 or 2e+00), `1.5`, or a string such as `1500m` as given. */}}
{{- define "cluster-init.number" -}}
{{- if kindIs "string" . }}{{ . }}
{{- else if eq (float64 (int64 .)) (float64 .) }}{{ int64 . }}
{{- else }}{{ toString . }}
{{- end }}
{{- end }}
