{{/*
Named templates shared by every manifest. Most take a context dict:
  root  the top-level context ($)
  name  a service name (a key of .Values.services), or a component such as "test"
  svc   the service's values merged over .Values.serviceDefaults (see trellis.svc)
*/}}

{{/* Chart name (app.kubernetes.io/name). */}}
{{- define "trellis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every resource name: the release name, unless it lacks the chart name. */}}
{{- define "trellis.fullname" -}}
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

{{/* Name of a component's resources: <fullname>-<name>. Context: root, name. */}}
{{- define "trellis.componentName" -}}
{{- printf "%s-%s" (include "trellis.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select a component's pods. Context: root, name (optional). */}}
{{- define "trellis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trellis.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .name }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* Labels of every resource. Context: root, name (optional). */}}
{{- define "trellis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "trellis.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: trellis
{{- end -}}

{{/*
Adds "svc" to a context dict: the service's entry merged over .Values.serviceDefaults.
Usage: {{- $ctx := dict "root" $ "name" $name }}{{- include "trellis.resolve" $ctx }} then $ctx.svc.
*/}}
{{- define "trellis.resolve" -}}
{{- $_ := set . "svc" (mergeOverwrite (deepCopy .root.Values.serviceDefaults) (deepCopy (index .root.Values.services .name))) -}}
{{- end -}}

{{/* Environment variable prefix of a service: CONTACTS. Context: name. */}}
{{- define "trellis.envPrefix" -}}
{{- .name | upper -}}
{{- end -}}

{{/*
Image reference: <registry>/<repository>:<tag>[@<digest>]; the repository defaults to the
service's name (the image built with --build-arg SERVICE=<name>). Context: root, name, svc.
*/}}
{{- define "trellis.image" -}}
{{- $img := .svc.image | default dict -}}
{{- $tag := $img.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- $repo := $img.repository | default .name -}}
{{- if .root.Values.image.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .root.Values.image.registry) $repo -}}
{{- end -}}
{{- printf "%s:%s" $repo $tag -}}
{{- with $img.digest }}@{{ . }}{{- end -}}
{{- end -}}

{{/* Name of the Secret behind an entry of .Values.secrets. Context: root, secret (entry name). */}}
{{- define "trellis.secretName" -}}
{{- $s := index .root.Values.secrets .secret -}}
{{- if and $s.existingSecret (not $s.create) -}}
{{- $s.existingSecret -}}
{{- else -}}
{{- printf "%s-%s" (include "trellis.fullname" .root) (kebabcase .secret) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of a service's database Secret. Context: root, name, svc. */}}
{{- define "trellis.dbSecretName" -}}
{{- if and .svc.database.existingSecret (not .svc.database.create) -}}
{{- .svc.database.existingSecret -}}
{{- else -}}
{{- printf "%s-db" (include "trellis.componentName" .) -}}
{{- end -}}
{{- end -}}

{{/* Name of a service's CloudNativePG Cluster. Context: root, name. */}}
{{- define "trellis.cnpgName" -}}
{{- printf "%s-pg" (include "trellis.componentName" .) -}}
{{- end -}}

{{/* Role the migration grants table access to. Context: name, svc. */}}
{{- define "trellis.appRole" -}}
{{- .svc.database.appRole | default (printf "%s_app" .name) -}}
{{- end -}}

{{/* Number of a named port of a service, failing clearly when it is not declared. Context: svc, name, port. */}}
{{- define "trellis.portNumber" -}}
{{- if not (hasKey .svc.ports .port) -}}
{{- fail (printf "services.%s: port %q is not in its ports (%s)" .name .port (keys .svc.ports | sortAlpha | join ", ")) -}}
{{- end -}}
{{- index .svc.ports .port | int -}}
{{- end -}}

{{/*
Non-secret environment of a service: the data of its ConfigMap (also hashed into the pod
annotations so a change rolls the pods). Context: root, name, svc.
*/}}
{{- define "trellis.configData" -}}
{{- $root := .root -}}
{{- $prefix := include "trellis.envPrefix" . -}}
{{- $data := dict -}}
{{- $_ := set $data "LOG_LEVEL" $root.Values.logLevel -}}
{{- $_ := set $data "NATS_URL" $root.Values.nats.url -}}
{{- $_ := set $data "NATS_STREAM_REPLICAS" ($root.Values.nats.streamReplicas | int | toString) -}}
{{- $_ := set $data "NATS_STREAM_MAX_AGE_DAYS" ($root.Values.nats.streamMaxAgeDays | toString) -}}
{{- with $root.Values.otel.endpoint -}}
{{- $_ := set $data "OTEL_EXPORTER_OTLP_ENDPOINT" . -}}
{{- end -}}
{{- $_ := set $data (printf "%s_BIND_HOST" $prefix) "0.0.0.0" -}}
{{- range $port, $number := .svc.ports -}}
{{- $_ := set $data (printf "%s_%s_PORT" $prefix (upper $port)) ($number | int | toString) -}}
{{- end -}}
{{- $_ := set $data (printf "%s_SHUTDOWN_GRACE_SECONDS" $prefix) (.svc.shutdownGraceSeconds | int | toString) -}}
{{- if .svc.database.enabled -}}
{{- $_ := set $data (printf "%s_DB_POOL_MIN" $prefix) (.svc.database.pool.min | int | toString) -}}
{{- $_ := set $data (printf "%s_DB_POOL_MAX" $prefix) (.svc.database.pool.max | int | toString) -}}
{{- end -}}
{{- /* <CALLER>_<CALLEE>_ADDR for every service that lists this one among its callers */ -}}
{{- range $callee, $entry := $root.Values.services -}}
{{- if has $.name ($entry.callers | default list) -}}
{{- $ctx := dict "svc" $entry "name" $callee "port" "grpc" -}}
{{- $_ := set $data (printf "%s_%s_ADDR" $prefix (upper $callee)) (printf "%s:%s" (include "trellis.componentName" (dict "root" $root "name" $callee)) (include "trellis.portNumber" $ctx)) -}}
{{- end -}}
{{- end -}}
{{- range $key, $value := .svc.env -}}
{{- $_ := set $data $key $value -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{/*
Secret environment of a service's pods (env entries), never in a ConfigMap.
Context: root, name, svc, migrate (bool: the migration Job, which also gets the owner URL and
reads chart-created values from its own hook Secret).
*/}}
{{- define "trellis.secretEnv" -}}
{{- $root := .root -}}
{{- $prefix := include "trellis.envPrefix" . -}}
{{- $migrateSecret := printf "%s-migrate" (include "trellis.componentName" .) -}}
{{- $token := $root.Values.secrets.internalToken -}}
- name: INTERNAL_TOKEN_SECRET
  valueFrom:
    secretKeyRef:
      {{- if and .migrate $token.create }}
      name: {{ $migrateSecret }}
      key: INTERNAL_TOKEN_SECRET
      {{- else }}
      name: {{ include "trellis.secretName" (dict "root" $root "secret" "internalToken") }}
      key: {{ $token.key }}
      {{- end }}
{{- $db := .svc.database }}
{{- if $db.enabled }}
{{- if $db.cnpg.enabled }}
- name: {{ $prefix }}_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "services.%s.database.cnpg.appRoleSecret is required with cnpg.enabled" .name) $db.cnpg.appRoleSecret }}
      key: password
- name: {{ $prefix }}_DATABASE_URL
  value: {{ printf "postgresql://%s:$(%s_DATABASE_PASSWORD)@%s-rw:5432/%s" (include "trellis.appRole" .) $prefix (include "trellis.cnpgName" .) .name | quote }}
{{- if .migrate }}
- name: {{ $prefix }}_MIGRATION_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "trellis.cnpgName" . }}-app
      key: uri
{{- end }}
{{- else if and .migrate $db.create }}
- name: {{ $prefix }}_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $migrateSecret }}
      key: {{ $prefix }}_DATABASE_URL
- name: {{ $prefix }}_MIGRATION_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $migrateSecret }}
      key: {{ $prefix }}_MIGRATION_DATABASE_URL
{{- else }}
- name: {{ $prefix }}_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "trellis.dbSecretName" . }}
      key: {{ $db.urlKey }}
{{- if .migrate }}
- name: {{ $prefix }}_MIGRATION_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "trellis.dbSecretName" . }}
      key: {{ $db.migrationUrlKey }}
{{- end }}
{{- end }}
{{- end }}
{{- if not .migrate }}
{{- range $env, $secret := .svc.secretEnv }}
{{- if not (hasKey $root.Values.secrets $secret) }}
{{- fail (printf "secretEnv %s refers to secrets.%s, which is not defined" $env $secret) }}
{{- end }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "trellis.secretName" (dict "root" $root "secret" $secret) }}
      key: {{ (index $root.Values.secrets $secret).key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod-level security context of every pod of the chart. Context: root. */}}
{{- define "trellis.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .root.Values.podSecurity.runAsUser }}
runAsGroup: {{ .root.Values.podSecurity.runAsGroup }}
fsGroup: {{ .root.Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security context of every container of the chart. Context: root. */}}
{{- define "trellis.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .root.Values.podSecurity.runAsUser }}
runAsGroup: {{ .root.Values.podSecurity.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Scheduling fields shared by every pod (imagePullSecrets, nodeSelector, tolerations). Context: root. */}}
{{- define "trellis.podScheduling" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The writable /tmp every container gets (the root filesystem is read-only). */}}
{{- define "trellis.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "trellis.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
Hook annotations. Context: events ("pre-install,pre-upgrade"), weight (int), policy.
*/}}
{{- define "trellis.hookAnnotations" -}}
helm.sh/hook: {{ .events }}
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: {{ .policy }}
{{- end -}}

{{/* Hook events of a service's migration: post-install when its database is created by CloudNativePG in this release. Context: svc. */}}
{{- define "trellis.migrationHookEvents" -}}
{{- if .svc.database.cnpg.enabled -}}
post-install,pre-upgrade
{{- else -}}
pre-install,pre-upgrade
{{- end -}}
{{- end -}}

{{/*
Checks of values that a JSON schema cannot express (references between entries). Included
once by the Deployment template.
*/}}
{{- define "trellis.validate" -}}
{{- $root := . -}}
{{- range $name, $entry := .Values.services -}}
{{- $ctx := dict "root" $root "name" $name -}}
{{- include "trellis.resolve" $ctx -}}
{{- $svc := $ctx.svc -}}
{{- range $svc.callers -}}
{{- if not (hasKey $root.Values.services .) -}}
{{- fail (printf "services.%s.callers: %q is not a service" $name .) -}}
{{- end -}}
{{- end -}}
{{- if $svc.callers -}}
{{- $_ := include "trellis.portNumber" (dict "svc" $svc "name" $name "port" "grpc") -}}
{{- end -}}
{{- $_ := include "trellis.portNumber" (dict "svc" $svc "name" $name "port" $svc.probes.port) -}}
{{- if and (eq $svc.probes.kind "http") (not (and $svc.probes.livenessPath $svc.probes.readinessPath)) -}}
{{- fail (printf "services.%s.probes: kind http needs livenessPath and readinessPath" $name) -}}
{{- end -}}
{{- range $svc.expose.ports -}}
{{- $_ := include "trellis.portNumber" (dict "svc" $svc "name" $name "port" .) -}}
{{- end -}}
{{- if and $svc.expose.enabled (not $svc.expose.ports) -}}
{{- fail (printf "services.%s.expose.ports: list the ports the ingress controller may reach" $name) -}}
{{- end -}}
{{- if and $svc.expose.ingress.enabled (not $svc.expose.enabled) -}}
{{- fail (printf "services.%s.expose.ingress needs expose.enabled" $name) -}}
{{- end -}}
{{- if lt (int $svc.hpa.maxReplicas) (int $svc.hpa.minReplicas) -}}
{{- fail (printf "services.%s.hpa: maxReplicas is below minReplicas" $name) -}}
{{- end -}}
{{- if gt (int $svc.database.pool.min) (int $svc.database.pool.max) -}}
{{- fail (printf "services.%s.database.pool: min is above max" $name) -}}
{{- end -}}
{{- if and $svc.database.create $svc.database.cnpg.enabled -}}
{{- fail (printf "services.%s.database: create and cnpg.enabled exclude each other" $name) -}}
{{- end -}}
{{- end -}}
{{- if .Values.tests.enabled -}}
{{- if not (hasKey .Values.services .Values.tests.service) -}}
{{- fail (printf "tests.service: %q is not a service" .Values.tests.service) -}}
{{- end -}}
{{- end -}}
{{- range $key, $s := .Values.secrets -}}
{{- if and $s.create (lt (len $s.value) 32) -}}
{{- fail (printf "secrets.%s.value: 32 or more characters are needed when create is true" $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Probes of a service's container: native gRPC health (grpc.health.v1) for kind grpc, HTTP GET
of livenessPath/readinessPath for kind http; a startup probe holds liveness off until the
service first reports healthy (it waits for its migrations). Context: name, svc.
*/}}
{{- define "trellis.probes" -}}
{{- $p := .svc.probes -}}
{{- $probe := dict -}}
{{- if eq $p.kind "grpc" -}}
{{- $check := dict "grpc" (dict "port" (include "trellis.portNumber" (dict "svc" .svc "name" .name "port" $p.port) | int)) -}}
{{- $_ := set $probe "startupProbe" $check -}}
{{- $_ := set $probe "livenessProbe" $check -}}
{{- $_ := set $probe "readinessProbe" $check -}}
{{- else -}}
{{- $_ := set $probe "startupProbe" (dict "httpGet" (dict "path" $p.livenessPath "port" $p.port)) -}}
{{- $_ := set $probe "livenessProbe" (dict "httpGet" (dict "path" $p.livenessPath "port" $p.port)) -}}
{{- $_ := set $probe "readinessProbe" (dict "httpGet" (dict "path" $p.readinessPath "port" $p.port)) -}}
{{- end -}}
{{- range $kind, $timing := dict "startupProbe" $p.startup "livenessProbe" $p.liveness "readinessProbe" $p.readiness }}
{{ $kind }}:
  {{- toYaml (index $probe $kind) | nindent 2 }}
  {{- range $field, $value := $timing }}
  {{ $field }}: {{ $value | int }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
Data of the Secrets this chart creates that a service's pods read (hashed into the pod
annotations, so a changed value rolls the pods). Context: root, name, svc.
*/}}
{{- define "trellis.createdSecretsData" -}}
{{- $data := dict -}}
{{- range $key, $s := .root.Values.secrets -}}
{{- if $s.create -}}
{{- $_ := set $data $key $s.value -}}
{{- end -}}
{{- end -}}
{{- if .svc.database.create -}}
{{- $_ := set $data "database" .svc.database.url -}}
{{- end -}}
{{- toJson $data -}}
{{- end -}}

{{/* A NetworkPolicy peer from a {namespaceSelector, podSelector} value (empty selectors left out). */}}
{{- define "trellis.peer" -}}
{{- $peer := dict -}}
{{- if .namespaceSelector }}{{ $_ := set $peer "namespaceSelector" .namespaceSelector }}{{ end -}}
{{- if .podSelector }}{{ $_ := set $peer "podSelector" .podSelector }}{{ end -}}
{{- if not $peer -}}
{{- fail "networkPolicy: a peer needs a namespaceSelector or a podSelector" -}}
{{- end -}}
{{- toYaml $peer -}}
{{- end -}}

{{/* An egress rule to a networkPolicy.egress target: {port, to}; an empty `to` allows any destination on the port. */}}
{{- define "trellis.egressTarget" -}}
{{- $rule := dict "ports" (list (dict "port" (.port | int) "protocol" "TCP")) -}}
{{- with .to }}{{ $_ := set $rule "to" . }}{{ end -}}
{{- list $rule | toYaml -}}
{{- end -}}

{{/* Egress to DNS (UDP and TCP). Context: root. */}}
{{- define "trellis.egressDns" -}}
{{- $dns := .root.Values.networkPolicy.egress.dns -}}
{{- $rule := dict "ports" (list (dict "port" ($dns.port | int) "protocol" "UDP") (dict "port" ($dns.port | int) "protocol" "TCP")) -}}
{{- with $dns.to }}{{ $_ := set $rule "to" . }}{{ end -}}
{{- list $rule | toYaml -}}
{{- end -}}

{{/* Egress to a service's PostgreSQL: its CloudNativePG cluster, or the configured destinations. Context: root, name, svc. */}}
{{- define "trellis.egressPostgresql" -}}
{{- $pg := .root.Values.networkPolicy.egress.postgresql -}}
{{- if .svc.database.cnpg.enabled -}}
{{- include "trellis.egressTarget" (dict "port" 5432 "to" (list (dict "podSelector" (dict "matchLabels" (dict "cnpg.io/cluster" (include "trellis.cnpgName" .)))))) -}}
{{- else -}}
{{- include "trellis.egressTarget" $pg -}}
{{- end -}}
{{- end -}}
