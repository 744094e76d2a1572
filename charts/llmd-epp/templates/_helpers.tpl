{{/* Chart name, truncated to a DNS label. */}}
{{- define "llmd-epp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full resource name: <release>-<chart>, or <release> when it already holds the chart name. */}}
{{- define "llmd-epp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llmd-epp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmd-epp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "llmd-epp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "llmd-epp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: endpoint-picker
app.kubernetes.io/part-of: llmd
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "llmd-epp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "llmd-epp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "llmd-epp.poolName" -}}
{{- default (include "llmd-epp.fullname" .) .Values.inferencePool.name -}}
{{- end -}}

{{- define "llmd-epp.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The scheduler config as YAML, with kvCache.blockSize and kvCache.hashSeed written into every
precise-prefix-cache-scorer (rendering fails when the config already sets other values).
*/}}
{{- define "llmd-epp.schedulerConfig" -}}
{{- $cfg := deepCopy .Values.schedulerConfig -}}
{{- $plugins := list -}}
{{- $seed := toString .Values.kvCache.hashSeed -}}
{{- $bs := int .Values.kvCache.blockSize -}}
{{- range $p := $cfg.plugins -}}
{{- if eq $p.type "precise-prefix-cache-scorer" -}}
{{- $params := default dict $p.parameters -}}
{{- if and (hasKey $params "hashSeed") (ne (toString $params.hashSeed) $seed) -}}
{{- fail (printf "schedulerConfig: precise-prefix-cache-scorer hashSeed %v differs from kvCache.hashSeed %s (the engines' PYTHONHASHSEED); set kvCache.hashSeed only" $params.hashSeed $seed) -}}
{{- end -}}
{{- $pbs := $params.blockSize | default $params.blockSizeTokens -}}
{{- if and $pbs (ne (int $pbs) $bs) -}}
{{- fail (printf "schedulerConfig: precise-prefix-cache-scorer blockSize %v differs from kvCache.blockSize %d (the engines' --block-size); set kvCache.blockSize only" $pbs $bs) -}}
{{- end -}}
{{- $params = omit $params "blockSizeTokens" -}}
{{- $_ := set $params "blockSize" $bs -}}
{{- $_ := set $params "hashSeed" $seed -}}
{{- $_ := set $p "parameters" $params -}}
{{- end -}}
{{- $plugins = append $plugins $p -}}
{{- end -}}
{{- $_ := set $cfg "plugins" $plugins -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* OTEL_* variables read by the llmd telemetry crate; nothing when no endpoint is set. */}}
{{- define "llmd-epp.otelEnv" -}}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .Values.otel.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .Values.otel.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.otel.samplerArg | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .Values.otel.serviceName | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)%s" (ternary (printf ",%s" .Values.otel.resourceAttributes) "" (ne .Values.otel.resourceAttributes "")) | quote }}
{{- end }}
{{- end -}}
