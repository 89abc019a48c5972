{{/*
Names, labels, and the checks and conversions the templates share.
*/}}

{{/* The app's name: nameOverride, or the release name (this chart deploys your app, so the
chart's own name would label every app alike). */}}
{{- define "cluster-init.name" -}}
{{- default .Release.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: fullnameOverride, the release name, or RELEASE-NAME; a DNS label. */}}
{{- define "cluster-init.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Release.Name .Values.nameOverride }}
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

{{/* Labels that select the pods: they never change across upgrades. */}}
{{- define "cluster-init.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cluster-init.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of the pod template: only what a chart upgrade alone does not change, so that bumping
the chart (helm.sh/chart) or its appVersion restarts no pod. The chart's labels win over
commonLabels (the checks refuse a clash with the selector).
*/}}
{{- define "cluster-init.templateLabels" -}}
{{- $labels := include "cluster-init.selectorLabels" . | fromYaml }}
{{- $_ := set $labels "app.kubernetes.io/managed-by" .Release.Service }}
{{- with .Values.component }}{{ $_ := set $labels "app.kubernetes.io/component" (toString .) }}{{ end }}
{{- with .Values.partOf }}{{ $_ := set $labels "app.kubernetes.io/part-of" (toString .) }}{{ end }}
{{- toYaml (merge $labels (deepCopy (.Values.commonLabels | default dict))) }}
{{- end }}

{{/* Labels of every object: the template's, the chart's version and the app's. */}}
{{- define "cluster-init.labels" -}}
{{- $labels := include "cluster-init.templateLabels" . | fromYaml }}
{{- $_ := set $labels "helm.sh/chart" (include "cluster-init.chart" .) }}
{{- with include "cluster-init.versionLabel" . }}{{ $_ := set $labels "app.kubernetes.io/version" . }}{{ end }}
{{- toYaml $labels }}
{{- end }}

{{/* Labels of an object with its own extra labels (.extra); the chart's win. */}}
{{- define "cluster-init.labelsWith" -}}
{{- toYaml (merge (include "cluster-init.labels" .context | fromYaml) (deepCopy (.extra | default dict))) }}
{{- end }}

{{/* Labels of the pods: the template's, then podLabels. */}}
{{- define "cluster-init.podLabels" -}}
{{- $labels := include "cluster-init.templateLabels" . | fromYaml }}
{{- toYaml (merge $labels (deepCopy (.Values.podLabels | default dict))) }}
{{- end }}

{{/* An object's annotations as YAML, or nothing: its own, then commonAnnotations. */}}
{{- define "cluster-init.annotations" -}}
{{- with merge (deepCopy (.own | default dict)) (deepCopy (.context.Values.commonAnnotations | default dict)) }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{- define "cluster-init.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cluster-init.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image.tag as a string: numbers reach templates as float64, `2` must not print as 2e+00. */}}
{{- define "cluster-init.imageTag" -}}
{{- $tag := .Values.image.tag }}
{{- if kindIs "float64" $tag }}{{ int64 $tag }}{{ else }}{{ toString ($tag | default "") }}{{ end }}
{{- end }}

{{/* REGISTRY/REPOSITORY:TAG@DIGEST, each part when set. */}}
{{- define "cluster-init.image" -}}
{{- $registry := .Values.image.registry | default (dig "imageRegistry" "" (.Values.global | default dict)) }}
{{- $ref := .Values.image.repository }}
{{- if $registry }}{{ $ref = printf "%s/%s" (trimSuffix "/" $registry) $ref }}{{ end }}
{{- with include "cluster-init.imageTag" . }}{{ $ref = printf "%s:%s" $ref . }}{{ end }}
{{- with .Values.image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end }}
{{- $ref }}
{{- end }}

{{/* app.kubernetes.io/version: the image tag as a label value (63 characters, alphanumeric at
both ends); none for a digest alone, which is no version a person reads. */}}
{{- define "cluster-init.versionLabel" -}}
{{- $tag := include "cluster-init.imageTag" . | trunc 63 }}
{{- regexReplaceAll "[^A-Za-z0-9]+$" (regexReplaceAll "^[^A-Za-z0-9]+" $tag "") "" }}
{{- end }}

{{/*
A whole number from values: numbers reach templates as float64, and `toString` would print
1e+06 for a million.
*/}}
{{- define "cluster-init.int" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}

{{/* Whether a value is unset: empty string or null (which deletes the key). */}}
{{- define "cluster-init.unset" -}}
{{- if or (kindIs "invalid" .) (eq (toString .) "") }}true{{ end }}
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

{{/* resources.limits.cpu / requests.cpu / limits.memory / requests.memory, or nothing. */}}
{{- define "cluster-init.resource" -}}
{{- $r := .context.Values.resources | default dict }}
{{- $v := dig .kind .name "" $r }}
{{- if not (include "cluster-init.unset" $v) }}{{ include "cluster-init.number" $v }}{{ end }}
{{- end }}

{{- define "cluster-init.hasCpuLimit" -}}
{{- if include "cluster-init.resource" (dict "context" . "kind" "limits" "name" "cpu") }}true{{ end }}
{{- end }}

{{/* Whether the pod has a CPU request (Kubernetes defaults the request to the limit). */}}
{{- define "cluster-init.hasCpuRequest" -}}
{{- if or (include "cluster-init.hasCpuLimit" .) (include "cluster-init.resource" (dict "context" . "kind" "requests" "name" "cpu")) }}true{{ end }}
{{- end }}

{{- define "cluster-init.hasMemoryRequest" -}}
{{- if or (include "cluster-init.resource" (dict "context" . "kind" "limits" "name" "memory")) (include "cluster-init.resource" (dict "context" . "kind" "requests" "name" "memory")) }}true{{ end }}
{{- end }}

{{/* A CPU quantity (`2`, `1.5`, `1500m`) in millicores, as a decimal string. */}}
{{- define "cluster-init.millicores" -}}
{{- $s := toString . }}
{{- if hasSuffix "m" $s }}{{ trimSuffix "m" $s | float64 }}{{ else }}{{ mulf (float64 $s) 1000 }}{{ end }}
{{- end }}

{{/* A Kubernetes memory quantity (`512Mi`, `1G`, `1e9`, bytes) in bytes, as a decimal string. */}}
{{- define "cluster-init.k8sBytes" -}}
{{- $s := toString . }}
{{- $num := regexFind "^[0-9.]+(e[0-9]+)?" $s }}
{{- $unit := trimPrefix $num $s }}
{{- $scale := get (dict "" 1.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0) $unit }}
{{- mulf (float64 $num) (float64 $scale) }}
{{- end }}

{{/* A cluster-init size (`300M`, `1Gi`, bytes; K, M, G are binary) in bytes, as a decimal string. */}}
{{- define "cluster-init.sizeBytes" -}}
{{- $s := toString . }}
{{- $num := regexFind "^[0-9.]+" $s }}
{{- $unit := trimPrefix $num $s | trimSuffix "B" | trimSuffix "i" | upper }}
{{- $scale := get (dict "" 1.0 "K" 1024.0 "M" 1048576.0 "G" 1073741824.0 "T" 1099511627776.0) $unit }}
{{- mulf (float64 $num) (float64 $scale) }}
{{- end }}

{{/*
The pool's size as NOTES.txt explains it, as JSON: `source` (where the CPU budget comes from),
`budget` (CPUs), `workers` (per pod) and `memoryBound`; no `budget` when it depends on the node.
Called with dict "context" $ "round" floor|ceil. It follows cluster-init's arithmetic:
max = round(budget), never below 1; workerMemory caps it at (memory limit - reserve) /
workerMemory, at least 1; max-K = max - K, never below 1.
*/}}
{{- define "cluster-init.poolSize" -}}
{{- $ctx := .context }}
{{- $out := dict }}
{{- $q := "" }}
{{- if $ctx.Values.cpuFromRequests }}
{{- $q = include "cluster-init.resource" (dict "context" $ctx "kind" "requests" "name" "cpu") | default (include "cluster-init.resource" (dict "context" $ctx "kind" "limits" "name" "cpu")) }}
{{- $_ := set $out "source" (printf "resources.requests.cpu (%s)" $q) }}
{{- else if not (include "cluster-init.unset" $ctx.Values.cpus) }}
{{- $q = include "cluster-init.number" $ctx.Values.cpus }}
{{- $_ := set $out "source" (printf "cpus (%s)" $q) }}
{{- else if include "cluster-init.hasCpuLimit" $ctx }}
{{- $q = include "cluster-init.resource" (dict "context" $ctx "kind" "limits" "name" "cpu") }}
{{- $_ := set $out "source" (printf "resources.limits.cpu (%s)" $q) }}
{{- end }}
{{- $w := include "cluster-init.workers" $ctx }}
{{- if $q }}
{{- $budget := divf (float64 (include "cluster-init.millicores" $q)) 1000 }}
{{- $_ := set $out "budget" $budget }}
{{- if hasPrefix "max" $w }}
{{- $n := int64 (ternary (ceil $budget) (floor $budget) (eq .round "ceil")) }}
{{- if lt $n 1 }}{{ $n = 1 }}{{ end }}
{{- $limit := include "cluster-init.resource" (dict "context" $ctx "kind" "limits" "name" "memory") }}
{{- if and $limit (not (include "cluster-init.unset" $ctx.Values.workerMemory)) }}
{{- $reserve := 0.0 }}
{{- if not (include "cluster-init.unset" $ctx.Values.memoryReserve) }}{{ $reserve = float64 (include "cluster-init.sizeBytes" $ctx.Values.memoryReserve) }}{{ end }}
{{- $bound := int64 (floor (divf (subf (float64 (include "cluster-init.k8sBytes" $limit)) $reserve) (float64 (include "cluster-init.sizeBytes" $ctx.Values.workerMemory)))) }}
{{- if lt $bound 1 }}{{ $bound = 1 }}{{ end }}
{{- $_ := set $out "memoryBound" $bound }}
{{- if lt $bound $n }}{{ $n = $bound }}{{ end }}
{{- end }}
{{- if hasPrefix "max-" $w }}
{{- $n = sub $n (int64 (trimPrefix "max-" $w)) }}
{{- if lt $n 1 }}{{ $n = 1 }}{{ end }}
{{- end }}
{{- $_ := set $out "workers" $n }}
{{- end }}
{{- end }}
{{- if not (hasPrefix "max" $w) }}
{{- $_ := set $out "workers" (int64 $w) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* terminationGracePeriodSeconds: as given, or what the stop needs plus 5 s for cluster-init
to flush its last spans and exit. */}}
{{- define "cluster-init.gracePeriod" -}}
{{- if include "cluster-init.unset" .Values.terminationGracePeriodSeconds }}
{{- add (int64 .Values.preStopSleepSeconds) (int64 .Values.stopTimeoutSeconds) 5 }}
{{- else }}
{{- int64 .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* The server container's port names, which probes may name. */}}
{{- define "cluster-init.portNames" -}}
{{- toJson (list "http" "admin") }}
{{- end }}

{{/*
The env vars the chart sets, as a YAML list. The checks read it too (extraEnv must not
redefine them: Kubernetes would keep the last one and warn).
*/}}
{{- define "cluster-init.env" -}}
- name: CLUSTER_INIT_WORKERS
  value: {{ include "cluster-init.workers" . | quote }}
{{- with .Values.cpuRound }}
- name: CLUSTER_INIT_CPU_ROUND
  value: {{ . | quote }}
{{- end }}
{{- if .Values.cpuFromRequests }}
- name: CLUSTER_INIT_CPU_MILLIS
  valueFrom:
    resourceFieldRef:
      containerName: server
      resource: requests.cpu
      divisor: 1m
{{- else if not (include "cluster-init.unset" .Values.cpus) }}
- name: CLUSTER_INIT_CPUS
  value: {{ include "cluster-init.number" .Values.cpus | quote }}
{{- end }}
{{- range $name, $key := dict "CLUSTER_INIT_WORKER_MEMORY" "workerMemory" "CLUSTER_INIT_MEMORY_RESERVE" "memoryReserve" "CLUSTER_INIT_BUDGET_INTERVAL" "budgetInterval" "CLUSTER_INIT_STALL_TIMEOUT" "stallTimeout" "CLUSTER_INIT_MAX_WORKER_MEMORY" "maxWorkerMemory" "CLUSTER_INIT_WORKER_OUTPUT" "workerOutput" "CLUSTER_INIT_READY" "ready" "CLUSTER_INIT_READY_TIMEOUT" "readyTimeout" "CLUSTER_INIT_MIN_READY" "minReady" }}
{{- $v := get $.Values $key }}
{{- if not (include "cluster-init.unset" $v) }}
- name: {{ $name }}
  value: {{ include "cluster-init.number" $v | quote }}
{{- end }}
{{- end }}
- name: CLUSTER_INIT_LISTEN
  value: {{ printf "http=:%s" (include "cluster-init.int" .Values.containerPort) | quote }}
- name: CLUSTER_INIT_ADMIN_LISTEN
  value: {{ printf ":%s" (include "cluster-init.int" .Values.admin.port) | quote }}
- name: CLUSTER_INIT_STOP_TIMEOUT
  value: {{ printf "%ss" (include "cluster-init.int" .Values.stopTimeoutSeconds) | quote }}
- name: CLUSTER_INIT_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: CLUSTER_INIT_LOG_LEVEL
  value: {{ .Values.log.level | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .Values.otel.serviceName | default (include "cluster-init.fullname" .) | quote }}
# $(VAR) expands the Downward API vars above: they must come first.
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ include "cluster-init.otelResourceAttributes" . | quote }}
{{- end }}
{{- end }}

{{/* YAML of a user value, rendered as a template (a sidecar may name the release's objects). */}}
{{- define "cluster-init.tplYaml" -}}
{{- tpl (toYaml .value) .context }}
{{- end }}

{{/*
Checks across values that the schema cannot express. Included once, by the Deployment. The
schema checks each value alone; these also hold under --skip-schema-validation.
*/}}
{{- define "cluster-init.checks" -}}
{{- if not .Values.image.repository }}
{{- fail "image.repository is required: your server's image, whose ENTRYPOINT is cluster-init" }}
{{- end }}
{{- if and (not (include "cluster-init.imageTag" .)) (not .Values.image.digest) }}
{{- fail "image.tag or image.digest is required: the chart's appVersion is cluster-init's version, not your image's" }}
{{- end }}
{{- range $key := list "app.kubernetes.io/name" "app.kubernetes.io/instance" }}
{{- if or (hasKey ($.Values.commonLabels | default dict) $key) (hasKey ($.Values.podLabels | default dict) $key) }}
{{- fail (printf "commonLabels and podLabels must not set %s: it selects the pods (set nameOverride instead)" $key) }}
{{- end }}
{{- end }}
{{- $stop := int64 .Values.stopTimeoutSeconds }}
{{- $sleep := int64 .Values.preStopSleepSeconds }}
{{- $grace := int64 (include "cluster-init.gracePeriod" .) }}
{{- if le $grace (add $stop $sleep) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than stopTimeoutSeconds (%d) + preStopSleepSeconds (%d) = %d: Kubernetes would SIGKILL the pod before cluster-init's stop timeout ends (leave it empty to have it computed)" $grace $stop $sleep (add $stop $sleep)) }}
{{- end }}
{{- if eq (int64 .Values.containerPort) (int64 .Values.admin.port) }}
{{- fail (printf "admin.port (%d) must differ from containerPort" (int64 .Values.admin.port)) }}
{{- end }}
{{- if and .Values.cpuFromRequests (not (include "cluster-init.unset" .Values.cpus)) }}
{{- fail "set cpuFromRequests or cpus, not both" }}
{{- end }}
{{- if and .Values.cpuFromRequests (not (include "cluster-init.hasCpuRequest" .)) }}
{{- fail "cpuFromRequests needs resources.requests.cpu (or resources.limits.cpu)" }}
{{- end }}
{{- $ports := include "cluster-init.portNames" . | fromJsonArray }}
{{- range $probe := list "readiness" "liveness" "startup" }}
{{- $p := get $.Values.probes $probe }}
{{- if and $p.enabled (kindIs "string" $p.httpGet.port) (not (has $p.httpGet.port $ports)) }}
{{- fail (printf "probes.%s.httpGet.port %q is not a port of the server container (%s, or a number)" $probe $p.httpGet.port (join ", " $ports)) }}
{{- end }}
{{- end }}
{{- $chartEnv := list }}
{{- range include "cluster-init.env" . | fromYamlArray }}{{ $chartEnv = append $chartEnv .name }}{{ end }}
{{- range .Values.extraEnv }}
{{- if has .name $chartEnv }}
{{- fail (printf "extraEnv sets %s, which the chart sets from its values (see README.md): set the value instead" .name) }}
{{- end }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- $a := .Values.autoscaling }}
{{- if and (include "cluster-init.unset" $a.targetCPUUtilizationPercentage) (include "cluster-init.unset" $a.targetMemoryUtilizationPercentage) (not $a.metrics) }}
{{- fail "autoscaling needs a target: targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or metrics" }}
{{- end }}
{{- if and (not (include "cluster-init.unset" $a.targetCPUUtilizationPercentage)) (not (include "cluster-init.hasCpuRequest" .)) }}
{{- fail "autoscaling on CPU utilisation needs resources.requests.cpu" }}
{{- end }}
{{- if and (not (include "cluster-init.unset" $a.targetMemoryUtilizationPercentage)) (not (include "cluster-init.hasMemoryRequest" .)) }}
{{- fail "autoscaling on memory utilisation needs resources.requests.memory" }}
{{- end }}
{{- if gt (int64 $a.minReplicas) (int64 $a.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) must not exceed maxReplicas (%d)" (int64 $a.minReplicas) (int64 $a.maxReplicas)) }}
{{- end }}
{{- end }}
{{- if .Values.podDisruptionBudget.enabled }}
{{- if and (not (include "cluster-init.unset" .Values.podDisruptionBudget.minAvailable)) (not (include "cluster-init.unset" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled }}
{{- fail "metrics: enable serviceMonitor or podMonitor, not both (every pod would be scraped twice)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor needs metrics.service.enabled: a ServiceMonitor scrapes a Service port (or use metrics.podMonitor)" }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) }}
{{- fail "ingress.enabled needs ingress.hosts: [{host: app.example.com, paths: [{path: /, pathType: Prefix}]}]" }}
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
{{- else if kindIs "bool" . }}{{ . }}
{{- else if eq (float64 (int64 .)) (float64 .) }}{{ int64 . }}
{{- else }}{{ toString . }}
{{- end }}
{{- end }}
