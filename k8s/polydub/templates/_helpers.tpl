{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "polydub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "polydub.fullname" -}}
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

{{/* A component's resource name: <fullname>-<component>, within the 63-character DNS limit. */}}
{{- define "polydub.componentName" -}}
{{- printf "%s-%s" (include "polydub.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "polydub.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "polydub.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "polydub.secretName" -}}
{{- default (include "polydub.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Credentials ------------------------------------------------------------------------- */}}

{{/* One credential of the chart's Secret: the value given, else derived (dev installs only):
the first .length hex digits of sha256(namespace/release/salt/key). Deterministic, so every
render (helm template, upgrade, a GitOps controller) writes the same value without `lookup`. */}}
{{- define "polydub.credential" -}}
{{- $s := .root.Values.secrets -}}
{{- if .value -}}
{{- .value -}}
{{- else if $s.allowDerived -}}
{{- printf "%s/%s/%s/%s" .root.Release.Namespace .root.Release.Name $s.derivationSalt .key | sha256sum | trunc (int .length) -}}
{{- else -}}
{{- fail (printf "secrets.%s is empty and secrets.allowDerived is false: name a Secret in secrets.existingSecret (production) or give the value" .name) -}}
{{- end -}}
{{- end -}}

{{- define "polydub.postgresPassword" -}}
{{- include "polydub.credential" (dict "root" . "value" .Values.secrets.postgresPassword "name" "postgresPassword" "key" "POSTGRES_PASSWORD" "length" 32) -}}
{{- end -}}

{{- define "polydub.s3AccessKey" -}}
{{- if .Values.secrets.s3AccessKey -}}
{{- .Values.secrets.s3AccessKey -}}
{{- else -}}
{{- printf "polydub-%s" (include "polydub.credential" (dict "root" . "value" "" "name" "s3AccessKey" "key" "POLYDUB_S3_ACCESS_KEY" "length" 12)) -}}
{{- end -}}
{{- end -}}

{{- define "polydub.s3SecretKey" -}}
{{- include "polydub.credential" (dict "root" . "value" .Values.secrets.s3SecretKey "name" "s3SecretKey" "key" "POLYDUB_S3_SECRET_KEY" "length" 40) -}}
{{- end -}}

{{/* Encrypts the webhook signing secrets at rest (the API's POLYDUB_API_WEBHOOK_SECRET_KEYS). */}}
{{- define "polydub.webhookSecretKeys" -}}
{{- include "polydub.credential" (dict "root" . "value" .Values.secrets.webhookSecretKeys "name" "webhookSecretKeys" "key" "POLYDUB_API_WEBHOOK_SECRET_KEYS" "length" 64) -}}
{{- end -}}

{{- define "polydub.postgresDsn" -}}
{{- if .Values.postgresql.bundled -}}
{{- printf "postgresql://%s:%s@%s:5432/%s" .Values.postgresql.user (urlquery (include "polydub.postgresPassword" .)) (include "polydub.componentName" (dict "root" . "component" "postgresql")) .Values.postgresql.database -}}
{{- else -}}
{{- .Values.postgresql.external.dsn -}}
{{- end -}}
{{- end -}}

{{/* The migration Job's hook phases: after the install when PostgreSQL is bundled (it does not
exist before), else before it; before every upgrade. */}}
{{- define "polydub.migrateHooks" -}}
{{- ternary "post-install,pre-upgrade" "pre-install,pre-upgrade" (and .Values.postgresql.bundled true) -}}
{{- end -}}

{{/* The Secret the migration Job reads its DSN from: a hook's own copy when the chart writes the
credentials (the release's Secret does not exist yet before an install, nor holds the new values
before an upgrade). */}}
{{- define "polydub.migrateSecretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- include "polydub.componentName" (dict "root" . "component" "migrate") -}}
{{- end -}}
{{- end -}}

{{/* Labels ------------------------------------------------------------------------------ */}}

{{- define "polydub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "polydub.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "polydub.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "polydub.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: polydub
{{- end -}}

{{/* Images ------------------------------------------------------------------------------ */}}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "polydub.imageRef" -}}
{{- $img := .image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "polydub.image" -}}
{{- include "polydub.imageRef" (dict "image" .Values.image "root" .) -}}
{{- end -}}

{{/* Service addresses -------------------------------------------------------------------- */}}

{{- define "polydub.natsUrl" -}}
{{- if .Values.nats.bundled -}}
{{- printf "nats://%s:4222" (include "polydub.componentName" (dict "root" . "component" "nats")) -}}
{{- else -}}
{{- required "nats.external.url is required when nats.bundled is false" .Values.nats.external.url -}}
{{- end -}}
{{- end -}}

{{/* KEDA asks the stream leader by <server_name>.<endpoint>: the bundled servers are named
after their pods, so the endpoint is the headless service's fully qualified name. */}}
{{- define "polydub.natsMonitoringEndpoint" -}}
{{- if .Values.nats.bundled -}}
{{- printf "%s.%s.svc.cluster.local:8222" (include "polydub.componentName" (dict "root" . "component" "nats-headless")) .Release.Namespace -}}
{{- else -}}
{{- required "nats.external.monitoringEndpoint is required for KEDA when nats.bundled is false" .Values.nats.external.monitoringEndpoint -}}
{{- end -}}
{{- end -}}

{{- define "polydub.s3Endpoint" -}}
{{- if .Values.s3.bundled -}}
{{- printf "%s:9000" (include "polydub.componentName" (dict "root" . "component" "minio")) -}}
{{- else -}}
{{- required "s3.external.endpoint is required when s3.bundled is false" .Values.s3.external.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "polydub.s3Secure" -}}
{{- if .Values.s3.bundled -}}false{{- else -}}{{ .Values.s3.external.secure }}{{- end -}}
{{- end -}}

{{/* What Triton's --model-repository gets: the polydub bucket under modelRepositoryPrefix
(s3://[https://]host:port/bucket/prefix, Triton's form for an S3 endpoint) or the value as is. */}}
{{- define "polydub.tritonModelRepository" -}}
{{- $v := .Values.triton -}}
{{- if $v.modelRepository -}}
{{- $v.modelRepository -}}
{{- else -}}
{{- $scheme := ternary "https://" "" (eq (include "polydub.s3Secure" .) "true") -}}
{{- printf "s3://%s%s/%s/%s" $scheme (include "polydub.s3Endpoint" .) .Values.s3.bucket (trimAll "/" $v.modelRepositoryPrefix) | trimSuffix "/" -}}
{{- end -}}
{{- end -}}

{{/* "true" when Triton reads its models from the polydub bucket (credentials and egress). */}}
{{- define "polydub.tritonReadsBucket" -}}
{{- if not .Values.triton.modelRepository -}}true{{- end -}}
{{- end -}}

{{/* A gRPC target that resolves to every ready Triton pod (the headless Service): the clients
balance round robin over its addresses (polydub/infra/triton.py). */}}
{{- define "polydub.tritonUrl" -}}
{{- printf "dns:///%s.%s.svc.cluster.local:%v" (include "polydub.componentName" (dict "root" . "component" "triton-headless")) .Release.Namespace .Values.triton.ports.grpc -}}
{{- end -}}

{{/* Pods ------------------------------------------------------------------------------- */}}

{{/* The POLYDUB_* settings every polydub container reads; credentials come from the Secret. */}}
{{- define "polydub.env" -}}
{{- $secret := include "polydub.secretName" . -}}
- name: POLYDUB_POSTGRES_DSN
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: POLYDUB_POSTGRES_DSN}
- name: POLYDUB_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: POLYDUB_S3_ACCESS_KEY}
- name: POLYDUB_S3_SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: POLYDUB_S3_SECRET_KEY}
{{ include "polydub.settingsEnv" . }}
{{- end -}}

{{/* The settings that are not credentials. */}}
{{- define "polydub.settingsEnv" -}}
- name: POLYDUB_NATS_URL
  value: {{ include "polydub.natsUrl" . | quote }}
- name: POLYDUB_JOBS_STREAM_REPLICAS
  value: {{ ternary .Values.nats.replicas 1 (and .Values.nats.bundled true) | quote }}
- name: POLYDUB_S3_ENDPOINT
  value: {{ include "polydub.s3Endpoint" . | quote }}
- name: POLYDUB_S3_SECURE
  value: {{ include "polydub.s3Secure" . | quote }}
- name: POLYDUB_S3_BUCKET
  value: {{ .Values.s3.bucket | quote }}
- name: POLYDUB_S3_REGION
  value: {{ .Values.s3.region | quote }}
{{- with .Values.s3.publicEndpoint }}
- name: POLYDUB_S3_PUBLIC_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: POLYDUB_TRITON_URL
  value: {{ include "polydub.tritonUrl" . | quote }}
- name: POLYDUB_TRITON_HTTP_PORT
  value: {{ .Values.triton.ports.http | quote }}
- name: POLYDUB_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: POLYDUB_LOG_JSON
  value: {{ .Values.config.logJson | quote }}
{{- range $name, $value := .Values.config.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
# The root filesystem is read-only: anything that wants a home or a cache writes under /tmp.
- name: HOME
  value: /tmp
{{- end -}}

{{- define "polydub.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{- define "polydub.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}

{{/* Common pod-level fields of the polydub pods. */}}
{{- define "polydub.podCommon" -}}
serviceAccountName: {{ include "polydub.serviceAccountName" .root }}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "polydub.podSecurityContext" .root | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Spread replicas over nodes and zones when the scheduler can (never blocks scheduling). */}}
{{- define "polydub.topologySpread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "polydub.selectorLabels" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "polydub.selectorLabels" . | nindent 8 }}
{{- end -}}

{{/* Checks on value combinations that would deploy something broken. */}}
{{- define "polydub.validate" -}}
{{- $n := int .Values.nats.replicas -}}
{{- if and .Values.nats.bundled (or (lt $n 1) (eq (mod $n 2) 0)) -}}
{{- fail (printf "nats.replicas must be 1 or an odd number >= 3 (a JetStream Raft quorum), got %d" $n) -}}
{{- end -}}
{{- if and .Values.nats.bundled (ne (toString .Values.nats.jetstream.syncInterval) "always") (gt $n 1) -}}
{{- fail "a clustered bundled NATS must keep nats.jetstream.syncInterval: always" -}}
{{- end -}}
{{- if and (not .Values.secrets.existingSecret) (not .Values.postgresql.bundled) (not .Values.postgresql.external.dsn) -}}
{{- fail "external PostgreSQL needs postgresql.external.dsn or secrets.existingSecret" -}}
{{- end -}}
{{- if and (not .Values.secrets.existingSecret) (not .Values.s3.bundled) (not (and .Values.secrets.s3AccessKey .Values.secrets.s3SecretKey)) -}}
{{- fail "an external S3 needs secrets.s3AccessKey and secrets.s3SecretKey, or secrets.existingSecret" -}}
{{- end -}}
{{- if and .Values.triton.gpu.enabled (ne .Values.triton.modelConfigName "gpu") -}}
{{- fail "triton.gpu.enabled needs triton.modelConfigName: gpu (the fp16 / TensorRT profile)" -}}
{{- end -}}
{{- if hasKey .Values.config.extraEnv "POLYDUB_SOURCE_URL_ALLOW_LOOPBACK" -}}
{{- fail "config.extraEnv.POLYDUB_SOURCE_URL_ALLOW_LOOPBACK is a test-only setting (source_url fetches over http to loopback): never deploy it" -}}
{{- end -}}
{{- end -}}

{{/* Egress rules (NetworkPolicy) ----------------------------------------------------------- */}}

{{/* DNS, anywhere (cluster DNS, node-local caches on link-local addresses). */}}
{{- define "polydub.egressDns" -}}
- ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- end -}}

{{/* One backing service, bundled (its pods) or external (the given peers, or any address). */}}
{{- define "polydub.egressService" -}}
{{- if .bundled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "polydub.selectorLabels" (dict "root" .root "component" .component) | nindent 10 }}
  ports:
    - {protocol: TCP, port: {{ .bundledPort }}}
{{- else }}
- ports:
    - {protocol: TCP, port: {{ .external.port }}}
  {{- with .external.networkPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "polydub.egressPostgres" -}}
{{- include "polydub.egressService" (dict "root" . "component" "postgresql" "bundled" .Values.postgresql.bundled "bundledPort" 5432 "external" .Values.postgresql.external) | trim -}}
{{- end -}}

{{- define "polydub.egressBackends" -}}
{{ include "polydub.egressPostgres" . }}
{{ include "polydub.egressService" (dict "root" . "component" "nats" "bundled" .Values.nats.bundled "bundledPort" 4222 "external" .Values.nats.external) | trim }}
{{ include "polydub.egressService" (dict "root" . "component" "minio" "bundled" .Values.s3.bundled "bundledPort" 9000 "external" .Values.s3.external) | trim }}
- to:
    - podSelector:
        matchLabels:
          {{- include "polydub.selectorLabels" (dict "root" . "component" "triton") | nindent 10 }}
  ports:
    - {protocol: TCP, port: {{ .Values.triton.ports.grpc }}}
    - {protocol: TCP, port: {{ .Values.triton.ports.http }}}
{{- with .Values.networkPolicy.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Client webhooks (the API sends them): the configured destinations and ports only. */}}
{{- define "polydub.egressWebhooks" -}}
{{- $w := .Values.networkPolicy.webhooks -}}
{{- if and $w.enabled $w.to $w.ports }}
- to:
    {{- toYaml $w.to | nindent 4 }}
  ports:
    {{- range $w.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
{{- end -}}
