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

{{/*
llm-d's values shape (the GIE inferencepool chart's), for helmfiles written for llm-d:
inferenceExtension.* and inferencePool.{targetPorts,modelServers} win over ours when set.
*/}}
{{- define "llmd-epp.ie" -}}
{{- toYaml (default dict .Values.inferenceExtension) -}}
{{- end -}}

{{/* GIE's built-in default-plugins.yaml (the simulator guide uses it by name). */}}
{{- define "llmd-epp.gieDefaultPlugins" -}}
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: queue-scorer
  - type: kv-cache-utilization-scorer
  - type: prefix-cache-scorer
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: queue-scorer, weight: 2}
      - {pluginRef: kv-cache-utilization-scorer, weight: 2}
      - {pluginRef: prefix-cache-scorer, weight: 3}
{{- end -}}

{{/*
The config file's text: inferenceExtension.pluginsCustomConfig[pluginsConfigFile] as written
(llm-d's shape; GIE's default-plugins.yaml by name), else schedulerConfig.
*/}}
{{- define "llmd-epp.configText" -}}
{{- $ie := fromYaml (include "llmd-epp.ie" .) -}}
{{- $file := default .Values.inferencePool.pluginsConfigFile $ie.pluginsConfigFile -}}
{{- if $file -}}
{{- $custom := merge (deepCopy (default dict $ie.pluginsCustomConfig)) (default dict .Values.inferencePool.pluginsCustomConfig) -}}
{{- if hasKey $custom $file -}}
{{- index $custom $file -}}
{{- else if eq $file "default-plugins.yaml" -}}
{{- include "llmd-epp.gieDefaultPlugins" . -}}
{{- else -}}
{{- fail (printf "pluginsConfigFile %q is neither in pluginsCustomConfig nor GIE's default-plugins.yaml" $file) -}}
{{- end -}}
{{- else -}}
{{- include "llmd-epp.schedulerConfig" . -}}
{{- end -}}
{{- end -}}

{{- define "llmd-epp.grpcPort" -}}
{{- $ie := fromYaml (include "llmd-epp.ie" .) -}}
{{- default .Values.ports.grpc $ie.extProcPort -}}
{{- end -}}

{{- define "llmd-epp.replicas" -}}
{{- $ie := fromYaml (include "llmd-epp.ie" .) -}}
{{- default .Values.replicas $ie.replicas -}}
{{- end -}}

{{- define "llmd-epp.targetPort" -}}
{{- with .Values.inferencePool.targetPorts -}}
{{- (index . 0).number -}}
{{- else -}}
{{- .Values.inferencePool.targetPort -}}
{{- end -}}
{{- end -}}

{{- define "llmd-epp.poolSelector" -}}
{{- $ms := default dict .Values.inferencePool.modelServers -}}
{{- toYaml (default .Values.inferencePool.selector $ms.matchLabels) -}}
{{- end -}}

{{- define "llmd-epp.serviceMonitorEnabled" -}}
{{- $ie := fromYaml (include "llmd-epp.ie" .) -}}
{{- $mon := default dict $ie.monitoring -}}
{{- $prom := default dict $mon.prometheus -}}
{{- if or .Values.serviceMonitor.enabled $prom.enabled -}}true{{- end -}}
{{- end -}}

{{/* "true" when the ext_proc port serves TLS: llm-d's inferenceExtension.flags.secure-serving
when given, else tls.enabled. */}}
{{- define "llmd-epp.secure" -}}
{{- $ie := fromYaml (include "llmd-epp.ie" .) -}}
{{- $flags := default dict $ie.flags -}}
{{- if hasKey $flags "secure-serving" -}}
{{- index $flags "secure-serving" | toString | lower | eq "true" -}}
{{- else -}}
{{- .Values.tls.enabled -}}
{{- end -}}
{{- end }}
