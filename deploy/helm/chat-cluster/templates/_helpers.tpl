{{- define "chat-cluster.name" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "chat-cluster.labels" -}}
app.kubernetes.io/name: chat-cluster
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "chat-cluster.selector" -}}
app.kubernetes.io/name: chat-cluster
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "chat-cluster.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "chat-cluster.nats" -}}
{{ include "chat-cluster.name" . }}-nats
{{- end -}}

{{/* Clients list every server, so a first connect survives one server being down. */}}
{{- define "chat-cluster.natsUrl" -}}
{{- $nats := include "chat-cluster.nats" . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.nats.replicas) -}}
{{- $urls = append $urls (printf "nats://%s-%d.%s-headless.%s.svc:4222" $nats $i $nats $.Release.Namespace) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* The stream settings every service passes on if it is the one that creates it. */}}
{{- define "chat-cluster.streamEnv" -}}
- name: NATS_URL
  value: {{ include "chat-cluster.natsUrl" . | quote }}
- name: STREAM_REPLICAS
  value: {{ .Values.stream.replicas | quote }}
- name: MAX_TEXT_BYTES
  value: {{ .Values.stream.maxTextBytes | quote }}
- name: DUPLICATE_WINDOW
  value: {{ .Values.stream.duplicateWindowSeconds | quote }}
{{- end -}}

{{- define "chat-cluster.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "chat-cluster.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* OpenTelemetry: read by the SDK itself; nothing is set without an endpoint. */}}
{{- define "chat-cluster.otelEnv" -}}
{{- if .root.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .root.Values.otel.endpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .root.Values.otel.sampleRatio | quote }}
{{- end }}
{{- end -}}

{{- define "chat-cluster.scrape" -}}
prometheus.io/scrape: "true"
prometheus.io/port: "8000"
prometheus.io/path: /metrics
{{- end -}}
