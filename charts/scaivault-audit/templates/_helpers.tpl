{{/* Names, labels and the paths the container sees. */}}

{{- define "scaivault-audit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scaivault-audit.fullname" -}}
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

{{/* The headless Service (the StatefulSet's serviceName). */}}
{{- define "scaivault-audit.headlessName" -}}
{{- printf "%s-headless" (include "scaivault-audit.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scaivault-audit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scaivault-audit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "scaivault-audit.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "scaivault-audit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: scaivault
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "scaivault-audit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scaivault-audit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "scaivault-audit.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the container finds its files. */}}
{{- define "scaivault-audit.configDir" -}}/etc/scaivault-audit{{- end }}
{{- define "scaivault-audit.configFile" -}}/etc/scaivault-audit/scaivault-audit.toml{{- end }}
{{- define "scaivault-audit.tlsDir" -}}/var/run/scaivault-audit/tls{{- end }}
{{- define "scaivault-audit.tokensDir" -}}/var/run/scaivault-audit/tokens{{- end }}
{{- define "scaivault-audit.jwksDir" -}}/var/run/scaivault-audit/jwks{{- end }}
{{- define "scaivault-audit.scaivaultDir" -}}/var/run/scaivault-audit/scaivault{{- end }}
{{- define "scaivault-audit.integrityKeysDir" -}}/var/run/scaivault-audit/integrity-keys{{- end }}
{{- define "scaivault-audit.natsCredentialsDir" -}}/var/run/scaivault-audit/nats-credentials{{- end }}
{{- define "scaivault-audit.natsCaDir" -}}/var/run/scaivault-audit/nats-ca{{- end }}
{{- define "scaivault-audit.cursorKeyDir" -}}/var/run/scaivault-audit/cursor-key{{- end }}
{{- define "scaivault-audit.natsClientTlsDir" -}}/var/run/scaivault-audit/nats-client-tls{{- end }}

{{/* The chart's own Secret holds whatever is given inline; an existing Secret wins. */}}
{{- define "scaivault-audit.secretName" -}}
{{- printf "%s-secrets" (include "scaivault-audit.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scaivault-audit.tokensSecret" -}}
{{- $a := .Values.auth.staticTokens }}
{{- if $a.existingSecret }}{{ $a.existingSecret }}{{ else if or $a.tokensToml .Values.auth.adminToken.enabled }}{{ include "scaivault-audit.secretName" . }}{{ end }}
{{- end }}

{{/* The admin token's Secret: created at install, kept by uninstall, reused by upgrades. */}}
{{- define "scaivault-audit.adminTokenSecretName" -}}
{{- printf "%s-admin-token" (include "scaivault-audit.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The admin token: the one in the existing admin token Secret (upgrades, re-installs), else a new
random one ("skt_" and 64 hex digits, like `scaivault-audit token new`). Remembered for the rest
of the rendering, so the Secret and the tokens file's hash agree.
*/}}
{{- define "scaivault-audit.adminToken" -}}
{{- $a := .Values.auth.adminToken }}
{{- if not (hasKey $a "generatedValue") }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "scaivault-audit.adminTokenSecretName" .) }}
{{- $data := default dict (get (default dict $existing) "data") }}
{{- if hasKey $data "token" }}
{{- $_ := set $a "generatedValue" (get $data "token" | b64dec) }}
{{- else }}
{{- $_ := set $a "generatedValue" (printf "skt_%s" (randAlphaNum 64 | sha256sum)) }}
{{- end }}
{{- end }}
{{- get $a "generatedValue" }}
{{- end }}

{{/* The admin token's entry of the tokens file: its SHA-256 (the file's format), every scope. */}}
{{- define "scaivault-audit.adminTokenEntry" -}}
[[tokens]]
name = "chart-admin-token"
sha256 = {{ include "scaivault-audit.adminToken" . | sha256sum | quote }}
identity_id = "system:chart-admin"
scopes = ["audit:read", "audit:write", "audit:export"]
all_tenants = true
{{- end }}

{{- define "scaivault-audit.tokensKey" -}}
{{- if .Values.auth.staticTokens.existingSecret }}{{ .Values.auth.staticTokens.existingSecretKey }}{{ else }}tokens.toml{{ end }}
{{- end }}

{{- define "scaivault-audit.jwksSecret" -}}
{{- $j := .Values.auth.jwt }}
{{- if $j.jwksExistingSecret }}{{ $j.jwksExistingSecret }}{{ else if $j.jwks }}{{ include "scaivault-audit.secretName" . }}{{ end }}
{{- end }}

{{- define "scaivault-audit.jwksKey" -}}
{{- if .Values.auth.jwt.jwksExistingSecret }}{{ .Values.auth.jwt.jwksExistingSecretKey }}{{ else }}jwks.json{{ end }}
{{- end }}

{{- define "scaivault-audit.scaivaultSecret" -}}
{{- $s := .Values.scaivault }}
{{- if $s.existingSecret }}{{ $s.existingSecret }}{{ else if $s.token }}{{ include "scaivault-audit.secretName" . }}{{ end }}
{{- end }}

{{- define "scaivault-audit.scaivaultKey" -}}
{{- if .Values.scaivault.existingSecret }}{{ .Values.scaivault.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* True (non-empty) when the chart renders its own Secret. */}}
{{- define "scaivault-audit.ownSecret" -}}
{{- if or (and (or .Values.auth.staticTokens.tokensToml .Values.auth.adminToken.enabled) (not .Values.auth.staticTokens.existingSecret)) (and .Values.auth.jwt.jwks (not .Values.auth.jwt.jwksExistingSecret)) (and .Values.scaivault.token (not .Values.scaivault.existingSecret)) }}true{{ end }}
{{- end }}

{{/* The JWKS location given to the service: a URL, or the mounted file. */}}
{{- define "scaivault-audit.jwksUrl" -}}
{{- if .Values.auth.jwt.jwksUrl }}{{ .Values.auth.jwt.jwksUrl }}{{ else if include "scaivault-audit.jwksSecret" . }}file://{{ include "scaivault-audit.jwksDir" . }}/jwks.json{{ end }}
{{- end }}

{{- define "scaivault-audit.scheme" -}}
{{- if .Values.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/*
The service's TOML file, in the shape of config/scaivault-audit.toml. Strings go through toJson:
a JSON string is a valid TOML basic string. Numbers go through int64, because Helm reads YAML
numbers as float64 and would print large ones in exponent notation.
*/}}
{{- define "scaivault-audit.configToml" -}}
{{- $c := .Values.config -}}
# Rendered by the scaivault-audit Helm chart from its values; see config/scaivault-audit.toml in
# the repository for every key. listen, data_dir and the log level/format come from the
# container's environment (BIND_ADDRESS, SCAIVAULT_AUDIT_DATA_DIR, LOG_LEVEL, LOG_FORMAT).

[server]
max_body_bytes = {{ int64 $c.server.maxBodyBytes }}
max_batch_events = {{ int64 $c.server.maxBatchEvents }}
max_concurrent_summaries = {{ int64 $c.server.maxConcurrentSummaries }}
max_concurrent_ingest_parses = {{ int64 $c.server.maxConcurrentIngestParses }}
busy_wait_ms = {{ int64 $c.server.busyWaitMs }}
{{- if .Values.tls.enabled }}
tls_cert_file = {{ printf "%s/tls.crt" (include "scaivault-audit.tlsDir" .) | toJson }}
tls_key_file = {{ printf "%s/tls.key" (include "scaivault-audit.tlsDir" .) | toJson }}
{{- end }}

[storage]
commit_interval_ms = {{ int64 $c.storage.commitIntervalMs }}
commit_max_docs = {{ int64 $c.storage.commitMaxDocs }}
commit_max_bytes = {{ int64 $c.storage.commitMaxBytes }}
index_memory_mb = {{ int64 $c.storage.indexMemoryMb }}
index_threads = {{ int64 $c.storage.indexThreads }}
wal_segment_mb = {{ int64 $c.storage.walSegmentMb }}

[auth]
rate_limit_queries_per_minute = {{ int64 $c.rateLimit.queriesPerMinute }}
rate_limit_exports_per_minute = {{ int64 $c.rateLimit.exportsPerMinute }}
failed_auth_per_minute = {{ int64 $c.rateLimit.failedAuthPerMinute }}
jwks_refresh_seconds = {{ int64 .Values.auth.jwt.refreshSeconds }}
jwt_allow_any_audience = {{ .Values.auth.jwt.allowAnyAudience }}
{{- if include "scaivault-audit.tokensSecret" . }}
tokens_file = {{ printf "%s/tokens.toml" (include "scaivault-audit.tokensDir" .) | toJson }}
{{- end }}
{{- with include "scaivault-audit.jwksUrl" . }}
jwks_url = {{ toJson . }}
{{- end }}
{{- with .Values.auth.jwt.issuer }}
jwt_issuer = {{ toJson . }}
{{- end }}
{{- with .Values.auth.jwt.audience }}
jwt_audience = {{ toJson . }}
{{- end }}
{{- with .Values.auth.tokenReview }}
{{- if .enabled }}

[auth.token_review]
enabled = true
audience = {{ toJson .audience }}
issuer = {{ toJson .issuer }}
{{- range .bindings }}

[[auth.token_review.bindings]]
service_account = {{ toJson .serviceAccount }}
scopes = {{ toJson .scopes }}
tenant_id = {{ toJson .tenantId }}
{{- end }}
{{- end }}
{{- end }}

[export]
max_concurrent_jobs = {{ int64 .Values.export.maxConcurrentJobs }}
retry_max_seconds = {{ int64 .Values.export.retryMaxSeconds }}
schedule_min_interval_seconds = {{ int64 (.Values.export.scheduleMinIntervalSeconds | default 60) }}
allow_private_endpoints = {{ .Values.export.allowPrivateEndpoints | default false }}
endpoint_allowlist = {{ .Values.export.endpointAllowlist | default list | toJson }}
{{- /* Always rendered: in a pod, `file` destinations exist only when fileRoot is set. */}}
file_root = {{ toJson (.Values.export.fileRoot | default "") }}
{{- with .Values.export.credentialsPathPrefixes }}
credentials_path_prefixes = {{ toJson . }}
{{- end }}
{{- with .Values.scaivault.url }}
scaivault_url = {{ toJson . }}
{{- end }}
{{- if include "scaivault-audit.scaivaultSecret" . }}
scaivault_token_file = {{ printf "%s/token" (include "scaivault-audit.scaivaultDir" .) | toJson }}
{{- end }}

[audit_of_audit]
enabled = {{ $c.auditOfAudit.enabled }}

[integrity]
checkpoint_interval_seconds = {{ int64 $c.integrity.checkpointIntervalSeconds }}
{{- if .Values.integrity.keysSecret }}
keys_dir = {{ include "scaivault-audit.integrityKeysDir" . | toJson }}
{{- end }}
{{- if .Values.cluster.enabled }}

{{ include "scaivault-audit.clusterToml" . }}
{{- end }}
{{- with .Values.operator.namespaces }}

[operator]
namespaces = {{ toJson . }}
{{- end }}
{{- end }}

{{/* The namespaces the operator watches: the release namespace, then operator.namespaces. */}}
{{- define "scaivault-audit.watchedNamespaces" -}}
{{- toJson (prepend (without (.Values.operator.namespaces | default list) .Release.Namespace) .Release.Namespace) }}
{{- end }}

{{/* BIND_ADDRESS: listenAddress and the service port; an IPv6 address gets brackets. */}}
{{- define "scaivault-audit.bindAddress" -}}
{{- if contains ":" .Values.listenAddress }}
{{- printf "[%s]:%v" .Values.listenAddress .Values.service.port }}
{{- else }}
{{- printf "%s:%v" .Values.listenAddress .Values.service.port }}
{{- end }}
{{- end }}

{{/*
The NATS URL list of cluster mode: cluster.nats.url, or the bundled NATS chart's client Service
(the official nats chart names its resources "<release>-nats", or "<release>" when the release
name already contains "nats").
*/}}
{{- define "scaivault-audit.natsUrl" -}}
{{- $n := .Values.cluster.nats }}
{{- if $n.bundled }}
{{- $service := ternary .Release.Name (printf "%s-nats" .Release.Name) (contains "nats" .Release.Name) | trunc 63 | trimSuffix "-" }}
{{- printf "nats://%s.%s.svc:%d" $service .Release.Namespace (int64 $n.bundledPort) }}
{{- else }}
{{- $n.url }}
{{- end }}
{{- end }}

{{/*
The TOML [cluster] section. Files come from Secrets mounted read-only; the replica id is left to
the service's default, the pod name (HOSTNAME), which a StatefulSet keeps per ordinal.
*/}}
{{- define "scaivault-audit.clusterToml" -}}
{{- $c := .Values.cluster -}}
[cluster]
nats_url = {{ include "scaivault-audit.natsUrl" . | toJson }}
{{- if $c.nats.credentialsSecret }}
credentials_file = {{ printf "%s/nats.creds" (include "scaivault-audit.natsCredentialsDir" .) | toJson }}
{{- end }}
{{- if $c.nats.tls.caSecret }}
tls_ca_file = {{ printf "%s/ca.crt" (include "scaivault-audit.natsCaDir" .) | toJson }}
{{- end }}
{{- if $c.nats.tls.clientSecret }}
tls_cert_file = {{ printf "%s/tls.crt" (include "scaivault-audit.natsClientTlsDir" .) | toJson }}
tls_key_file = {{ printf "%s/tls.key" (include "scaivault-audit.natsClientTlsDir" .) | toJson }}
{{- end }}
stream = {{ toJson $c.stream.name }}
subject = {{ toJson $c.stream.subject }}
replicas = {{ int64 $c.stream.replicas }}
max_age_seconds = {{ int64 $c.stream.maxAgeSeconds }}
max_bytes = {{ int64 $c.stream.maxBytes }}
publish_timeout_ms = {{ int64 $c.stream.publishTimeoutMs }}
duplicate_window_seconds = {{ int64 $c.stream.duplicateWindowSeconds }}
max_lag_messages = {{ int64 $c.maxLagMessages }}
lease_ttl_seconds = {{ int64 $c.leaseTtlSeconds }}
leases_bucket = {{ toJson $c.buckets.leases }}
exports_bucket = {{ toJson $c.buckets.exports }}
sweeps_bucket = {{ toJson $c.buckets.sweeps }}
manifest_links_bucket = {{ toJson $c.buckets.manifestLinks }}
schedules_bucket = {{ toJson $c.buckets.schedules }}
cursor_key_file = {{ printf "%s/cursor.key" (include "scaivault-audit.cursorKeyDir" .) | toJson }}
{{- end }}

{{/* Majority of the replicas: floor(n/2)+1. */}}
{{- define "scaivault-audit.majority" -}}
{{- add1 (div (int64 .Values.replicaCount) 2) }}
{{- end }}

{{/* Refusals of cluster-mode values the schema cannot express with a clear message. */}}
{{- define "scaivault-audit.checkCluster" -}}
{{- $c := .Values.cluster }}
{{- if and (gt (int64 .Values.replicaCount) 1) (not $c.enabled) }}
{{- fail (printf "replicaCount %d needs cluster.enabled: without cluster mode each pod keeps its own WAL and index and pods do not replicate, so a second pod would split the audit log (docs/deployment.md, \"Cluster mode\")" (int64 .Values.replicaCount)) }}
{{- end }}
{{- if $c.enabled }}
{{- if and $c.nats.url $c.nats.bundled }}
{{- fail "cluster.nats.url and cluster.nats.bundled exclude each other: name an existing NATS cluster, or use the bundled one" }}
{{- end }}
{{- if not (or $c.nats.url $c.nats.bundled) }}
{{- fail "cluster.enabled needs cluster.nats.url (an existing NATS JetStream cluster of 3 servers with sync_interval: always) or cluster.nats.bundled (charts/scaivault-audit-cluster)" }}
{{- end }}
{{- if not .Values.integrity.keysSecret }}
{{- fail "cluster.enabled needs integrity.keysSecret: every replica must sign checkpoints and manifests with the same key ring (scaivault-audit integrity keygen, then a Secret; docs/deployment.md)" }}
{{- end }}
{{- $buckets := list $c.buckets.leases $c.buckets.exports $c.buckets.sweeps $c.buckets.manifestLinks $c.buckets.schedules }}
{{- if ne (len $buckets) (len (uniq $buckets)) }}
{{- fail "cluster.buckets.leases, exports, sweeps, manifestLinks and schedules must be different JetStream key-value buckets" }}
{{- end }}
{{- if not $c.cursorKeySecret }}
{{- fail "cluster.enabled needs cluster.cursorKeySecret: every replica must seal query cursors with the same key, or a cursor from one pod fails on another (openssl rand -hex 32, then a Secret; docs/cluster.md)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The chart's topology spread constraints of cluster mode (nodes, then zones). */}}
{{- define "scaivault-audit.clusterSpread" -}}
{{- range $key, $mode := dict "kubernetes.io/hostname" $.Values.cluster.topologySpread.nodes "topology.kubernetes.io/zone" $.Values.cluster.topologySpread.zones }}
{{- if $mode }}
- maxSkew: 1
  topologyKey: {{ $key }}
  whenUnsatisfiable: {{ $mode }}
  labelSelector:
    matchLabels:
      {{- include "scaivault-audit.selectorLabels" $ | nindent 6 }}
{{- end }}
{{- end }}
{{- end }}

{{/* The client ports of the NATS URLs, comma-separated (4222 where a URL names none). */}}
{{- define "scaivault-audit.natsPorts" -}}
{{- $ports := list }}
{{- range $url := include "scaivault-audit.natsUrl" . | splitList "," }}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" (trimPrefix "tls://" (trimPrefix "nats://" $url))) }}
{{- $ports = append $ports (default "4222" $port) }}
{{- end }}
{{- join "," $ports }}
{{- end }}
