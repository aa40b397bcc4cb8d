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

{{/* Clients list every server, so a first connect survives one server being down;
tls:// when the servers require TLS. */}}
{{- define "chat-cluster.natsUrl" -}}
{{- $nats := include "chat-cluster.nats" . -}}
{{- $scheme := ternary "tls" "nats" (.Values.nats.tls.enabled | default false) -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.nats.replicas) -}}
{{- $urls = append $urls (printf "%s://%s-%d.%s-headless.%s.svc:4222" $scheme $nats $i $nats $.Release.Namespace) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* The NATS users: the roles of services/chatlog/roles.py (the route user aside). */}}
{{- define "chat-cluster.roles" -}}
admin node archiver publisher
{{- end -}}

{{/* The Secret with every NATS password (keys: the roles, and route). */}}
{{- define "chat-cluster.credentialsSecret" -}}
{{- .Values.nats.auth.existingSecret | default (printf "%s-credentials" (include "chat-cluster.nats" .)) -}}
{{- end -}}

{{/* Bytes from a number or a Kubernetes quantity (8Gi, 500M): (list "name" value).
nats-server and the services disagree on what "GB" means, so they get bytes only. */}}
{{- define "chat-cluster.bytes" -}}
{{- $name := index . 0 -}}
{{- $value := index . 1 -}}
{{- if kindIs "string" $value -}}
{{- $text := trim $value -}}
{{- if not (regexMatch "^[0-9]+(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?$" $text) -}}
{{- fail (printf "%s: %q is not a size; give bytes or a quantity such as 8Gi or 500M" $name $text) -}}
{{- end -}}
{{- $units := dict "" 1 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 -}}
{{- $number := regexFind "^[0-9]+" $text -}}
{{- printf "%d" (mul (atoi $number) (index $units (trimPrefix $number $text))) -}}
{{- else if or (kindIs "float64" $value) (kindIs "int" $value) (kindIs "int64" $value) -}}
{{- if lt (float64 $value) 0.0 -}}
{{- fail (printf "%s: must not be negative" $name) -}}
{{- end -}}
{{- printf "%d" (int64 $value) -}}
{{- else -}}
{{- fail (printf "%s: %v is not a size" $name $value) -}}
{{- end -}}
{{- end -}}

{{/* How a service reaches NATS as its role: (dict "root" . "role" "node"). The password
comes from the credentials Secret, that role's key and no other. */}}
{{- define "chat-cluster.natsClientEnv" -}}
{{- $tls := .root.Values.nats.tls -}}
- name: NATS_URL
  value: {{ include "chat-cluster.natsUrl" .root | quote }}
- name: NATS_USER
  value: {{ .role | quote }}
- name: NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "chat-cluster.credentialsSecret" .root }}
      key: {{ .role }}
{{- if $tls.enabled }}
- name: NATS_TLS_CA
  value: /etc/nats-ca/ca.crt
{{- if $tls.verifyClients }}
- name: NATS_TLS_CERT
  value: /etc/nats-client-tls/tls.crt
- name: NATS_TLS_KEY
  value: /etc/nats-client-tls/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{- define "chat-cluster.natsClientMounts" -}}
{{- if .Values.nats.tls.enabled }}
- name: nats-ca
  mountPath: /etc/nats-ca
  readOnly: true
{{- if .Values.nats.tls.verifyClients }}
- name: nats-client-tls
  mountPath: /etc/nats-client-tls
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Clients get the CA only, never the servers' key. */}}
{{- define "chat-cluster.natsClientVolumes" -}}
{{- $tls := .Values.nats.tls -}}
{{- if $tls.enabled }}
- name: nats-ca
  secret:
    secretName: {{ required "nats.tls.secretName is required with nats.tls.enabled" $tls.secretName }}
    items:
      - key: ca.crt
        path: ca.crt
{{- if $tls.verifyClients }}
- name: nats-client-tls
  secret:
    secretName: {{ required "nats.tls.clientSecretName is required with nats.tls.verifyClients" $tls.clientSecretName }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}
{{- end -}}

{{- define "chat-cluster.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
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

{{/* The routes of every server, as a NATS config array; $(ROUTE_PASSWORD) is Kubernetes'
dependent variable syntax: the kubelet fills it in from the env var above it. */}}
{{- define "chat-cluster.routeUrls" -}}
{{- $nats := include "chat-cluster.nats" . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.nats.replicas) -}}
{{- $urls = append $urls (printf "%q" (printf "nats-route://route:$(ROUTE_PASSWORD)@%s-%d.%s-headless.%s.svc:6222" $nats $i $nats $.Release.Namespace)) -}}
{{- end -}}
[{{ join ", " $urls }}]
{{- end -}}

{{/* User tokens: the services' AUTH_* settings and the JWKS Secret's mount. */}}
{{- define "chat-cluster.authEnv" -}}
{{- $auth := .Values.auth -}}
{{- if not (has $auth.mode (list "jwt" "none")) }}
{{- fail (printf "auth.mode must be jwt or none, not %q" $auth.mode) }}
{{- end }}
- name: AUTH
  value: {{ $auth.mode | quote }}
{{- if eq $auth.mode "jwt" }}
{{- if not (or $auth.jwksUrl $auth.jwksSecret $auth.hs256Secret) }}
{{- fail "auth.mode jwt needs a key source: auth.jwksUrl, auth.jwksSecret or auth.hs256Secret (or auth.mode: none, anonymous)" }}
{{- end }}
{{- with $auth.jwksUrl }}
- name: JWKS_URL
  value: {{ . | quote }}
{{- end }}
{{- if $auth.jwksSecret }}
- name: JWKS_FILE
  value: /etc/chat-cluster/jwks/jwks.json
{{- end }}
{{- with $auth.hs256Secret }}
- name: AUTH_HS256_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: hs256-secret
{{- end }}
{{- with $auth.audience }}
- name: AUTH_AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- with $auth.issuer }}
- name: AUTH_ISSUER
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with $auth.allowedOrigins }}
- name: ALLOWED_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
{{- end -}}

{{- define "chat-cluster.authMounts" -}}
{{- if and (eq .Values.auth.mode "jwt") .Values.auth.jwksSecret }}
- name: jwks
  mountPath: /etc/chat-cluster/jwks
  readOnly: true
{{- end }}
{{- end -}}

{{- define "chat-cluster.authVolumes" -}}
{{- if and (eq .Values.auth.mode "jwt") .Values.auth.jwksSecret }}
- name: jwks
  secret:
    secretName: {{ .Values.auth.jwksSecret }}
    items:
      - key: jwks.json
        path: jwks.json
{{- end }}
{{- end -}}

{{/* The connection limits of a server (servicekit.connections), from its `limits` values. */}}
{{- define "chat-cluster.connectionLimitsEnv" -}}
- name: MAX_CONNECTIONS
  value: {{ .maxConnections | quote }}
- name: HEADER_TIMEOUT
  value: {{ .headerTimeout | quote }}
- name: READ_TIMEOUT
  value: {{ .readTimeout | quote }}
- name: MAX_CONNECTIONS_PER_ADDRESS
  value: {{ .maxConnectionsPerAddress | quote }}
- name: WRITE_TIMEOUT
  value: {{ .writeTimeout | quote }}
{{- end -}}
