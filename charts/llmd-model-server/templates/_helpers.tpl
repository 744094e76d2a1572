{{- define "llmd-ms.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or <release> when it already holds the chart name; roles add -<role>. */}}
{{- define "llmd-ms.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llmd-ms.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "llmd-ms.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: llmd
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "llmd-ms.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "llmd-ms.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "llmd-ms.llmdImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The ZMQ endpoint of the engines' KV-event publishers. */}}
{{- define "llmd-ms.kvEventsEndpoint" -}}
{{- if eq .Values.kvEvents.mode "central" -}}
{{- printf "tcp://%s.%s.svc.cluster.local:%d" .Values.kvEvents.eppService (default .Release.Namespace .Values.kvEvents.eppNamespace) (int .Values.kvEvents.port) -}}
{{- else -}}
{{- printf "tcp://*:%d" (int .Values.kvEvents.port) -}}
{{- end -}}
{{- end -}}

{{/* The KV-event topic: the EPP knows a pod as <IP>:<pool target port>. */}}
{{- define "llmd-ms.kvEventsTopic" -}}
{{- printf "kv@$(POD_IP):%d@%s" (int .Values.servicePort) .Values.model -}}
{{- end -}}

{{/* Environment every engine container shares: pod identity, hash seed, tracing. */}}
{{- define "llmd-ms.engineEnv" -}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
# vLLM's sha256_cbor block hashes start from this seed; the EPP hashes with the same one.
- name: PYTHONHASHSEED
  value: {{ .Values.kvCache.hashSeed | toString | quote }}
{{- if .Values.hfToken.secretName }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.hfToken.secretName }}
      key: {{ .Values.hfToken.secretKey }}
{{- end }}
{{- end -}}

{{/* OTEL_* variables for one service name. Args: (list $ serviceName). */}}
{{- define "llmd-ms.otelEnv" -}}
{{- $ := index . 0 -}}
{{- $svc := index . 1 -}}
{{- with $.Values.otel }}
{{- if .endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .protocol | quote }}
- name: OTEL_EXPORTER_OTLP_TRACES_INSECURE
  value: {{ hasPrefix "http://" .endpoint | toString | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .samplerArg | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ $svc | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)%s" (ternary (printf ",%s" .resourceAttributes) "" (ne .resourceAttributes "")) | quote }}
{{- end }}
{{- end }}
{{- end -}}
