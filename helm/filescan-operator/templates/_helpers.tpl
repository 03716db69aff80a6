{{/*
Helpers. Every name is prefixed with the chart name, so a parent chart's helpers never collide.
*/}}

{{- define "filescan-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "filescan-operator.fullname" -}}
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

{{/* A component's resource name: <fullname>-<component>, within 63 characters. */}}
{{- define "filescan-operator.componentName" -}}
{{- $full := include "filescan-operator.fullname" .root -}}
{{- printf "%s-%s" ($full | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "filescan-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "filescan-operator.labels" -}}
helm.sh/chart: {{ include "filescan-operator.chart" . }}
app.kubernetes.io/name: {{ include "filescan-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: filescan-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component; call with (dict "root" $ "component" "webhook"). */}}
{{- define "filescan-operator.componentLabels" -}}
{{ include "filescan-operator.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "filescan-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "filescan-operator.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels the operator's scan pods carry (set by controller/builders.py, not by this chart). */}}
{{- define "filescan-operator.scanPodSelector" -}}
app.kubernetes.io/component: scan
app.kubernetes.io/managed-by: filescan-operator
{{- end -}}

{{/* registry/repository[:tag|@digest]; call with (dict "image" .Values.image "root" $). */}}
{{- define "filescan-operator.imageRef" -}}
{{- $image := .image -}}
{{- $ref := printf "%s/%s" $image.registry $image.repository -}}
{{- if not $image.registry -}}{{- $ref = $image.repository -}}{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $ref $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "filescan-operator.image" -}}
{{- include "filescan-operator.imageRef" (dict "image" .Values.image "root" .) -}}
{{- end -}}

{{/* clamd's image: clamd.image when it names a repository, otherwise the project's image. */}}
{{- define "filescan-operator.clamdImage" -}}
{{- $c := .Values.clamd.image -}}
{{- if $c.repository -}}
{{- include "filescan-operator.imageRef" (dict "image" (dict "registry" $c.registry "repository" $c.repository "tag" $c.tag "digest" $c.digest) "root" .) -}}
{{- else -}}
{{- include "filescan-operator.image" . -}}
{{- end -}}
{{- end -}}

{{- define "filescan-operator.webhookServiceAccountName" -}}
{{- if .Values.webhook.serviceAccount.create -}}
{{- default (include "filescan-operator.componentName" (dict "root" . "component" "webhook")) .Values.webhook.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.webhook.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "filescan-operator.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "filescan-operator.componentName" (dict "root" . "component" "operator")) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "filescan-operator.webhookSecretName" -}}
{{- default (include "filescan-operator.componentName" (dict "root" . "component" "webhook-tokens")) .Values.webhook.existingSecret -}}
{{- end -}}

{{- define "filescan-operator.comm100SecretName" -}}
{{- default (include "filescan-operator.componentName" (dict "root" . "component" "comm100")) .Values.comm100.existingSecret -}}
{{- end -}}

{{- define "filescan-operator.comm100SecretKey" -}}
{{- if .Values.comm100.existingSecret -}}{{ .Values.comm100.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{- define "filescan-operator.webhookSecretKey" -}}
{{- if .Values.webhook.existingSecret -}}{{ .Values.webhook.existingSecretKey }}{{- else -}}tokens{{- end -}}
{{- end -}}

{{/* Where the scan Jobs find clamd. */}}
{{- define "filescan-operator.clamdAddress" -}}
{{- if .Values.clamd.enabled -}}
{{- printf "tcp://%s.%s.svc:%d" (include "filescan-operator.componentName" (dict "root" . "component" "clamd")) .Release.Namespace (int .Values.clamd.port) -}}
{{- else -}}
{{- .Values.clamd.externalAddress -}}
{{- end -}}
{{- end -}}

{{/* A clamd placement value, falling back to the scan pool's when null. */}}
{{- define "filescan-operator.clamdPlacement" -}}
{{- $own := index .root.Values.clamd .key -}}
{{- if kindIs "invalid" $own -}}{{- $own = index .root.Values.scan .key -}}{{- end -}}
{{- if $own -}}{{- toYaml $own -}}{{- end -}}
{{- end -}}

{{/* The pod-level securityContext every pod of the chart runs with (the restricted Pod Security Standard). */}}
{{- define "filescan-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "filescan-operator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Only the cpu and memory of requests/limits, as the operator's scan-Job settings take them. */}}
{{- define "filescan-operator.scanResource" -}}
{{- $section := index .root.Values.scan.resources .section | default dict -}}
{{- index $section .name | default "" -}}
{{- end -}}

{{/*
Invalid combinations fail here, at render time, with the value to change. Included by the settings
ConfigMap (always rendered), so `helm template` fails exactly as `helm install` does.
*/}}
{{- define "filescan-operator.validate" -}}
{{- $v := .Values -}}
{{- if and (not $v.comm100.token) (not $v.comm100.existingSecret) -}}
{{- fail "comm100.token (or comm100.existingSecret) is required: the operator reports verdicts with it" -}}
{{- end -}}
{{- if and $v.comm100.token $v.comm100.existingSecret -}}
{{- fail "set comm100.token or comm100.existingSecret, not both" -}}
{{- end -}}
{{- if and (empty $v.webhook.tokens) (not $v.webhook.existingSecret) -}}
{{- fail "webhook.tokens (or webhook.existingSecret) is required: the webhook refuses to run without authentication" -}}
{{- end -}}
{{- if and (not (empty $v.webhook.tokens)) $v.webhook.existingSecret -}}
{{- fail "set webhook.tokens or webhook.existingSecret, not both" -}}
{{- end -}}
{{- range $v.webhook.tokens -}}
{{- if or (lt (len .) 16) (has (lower .) (list "changeme" "change-me" "changethis" "secret" "token" "xxx" "todo")) -}}
{{- fail "every webhook.tokens entry must be at least 16 characters and not a placeholder (the webhook refuses it)" -}}
{{- end -}}
{{- if contains "," . -}}
{{- fail "a webhook.tokens entry cannot contain a comma (tokens are passed comma-separated)" -}}
{{- end -}}
{{- end -}}
{{- if empty $v.fetch.allowedFileHosts -}}
{{- fail "fetch.allowedFileHosts is required: with no host allowed, every upload would be refused" -}}
{{- end -}}
{{- if and (eq $v.scan.engine "clamd") (not $v.clamd.enabled) (not $v.clamd.externalAddress) -}}
{{- fail "clamd.enabled is false: set clamd.externalAddress (tcp://HOST:PORT) or scan.engine=clamscan" -}}
{{- end -}}
{{- if and $v.clamd.enabled $v.clamd.externalAddress -}}
{{- fail "clamd.externalAddress is only used with clamd.enabled=false" -}}
{{- end -}}
{{- if and (eq $v.scan.engine "clamscan") $v.clamd.enabled -}}
{{- fail "scan.engine=clamscan does not use clamd: set clamd.enabled=false" -}}
{{- end -}}
{{- if and $v.operator.standby.enabled (not $v.operator.peering.enabled) -}}
{{- fail "operator.standby needs operator.peering.enabled=true (peering decides which replica is active)" -}}
{{- end -}}
{{- if and $v.operator.standby.enabled (ge (int $v.operator.standby.priority) (int $v.operator.peering.priority)) -}}
{{- fail "operator.standby.priority must be lower than operator.peering.priority (equal priorities pause both)" -}}
{{- end -}}
{{- $p := $v.clamd.database.persistence -}}
{{- if and $v.clamd.enabled $p.enabled (or (gt (int $v.clamd.replicaCount) 1) $v.clamd.autoscaling.enabled) -}}
{{- fail "clamd.database.persistence works with one clamd replica only (two freshclams must not share a database): use the emptyDir database with a private mirror to scale clamd" -}}
{{- end -}}
{{- if and $v.clamd.enabled (not $v.clamd.freshclam.enabled) (not $p.enabled) -}}
{{- fail "clamd.freshclam.enabled=false needs clamd.database.persistence (a database volume you fill yourself); an empty emptyDir would leave clamd without signatures" -}}
{{- end -}}
{{- range $name, $pdb := dict "webhook" $v.webhook.podDisruptionBudget "clamd" $v.clamd.podDisruptionBudget -}}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) -}}
{{- fail (printf "%s.podDisruptionBudget: set minAvailable or maxUnavailable, not both" $name) -}}
{{- end -}}
{{- end -}}
{{- if and $v.webhook.ingress.enabled (empty $v.webhook.ingress.hosts) -}}
{{- fail "webhook.ingress.enabled needs at least one webhook.ingress.hosts entry" -}}
{{- end -}}
{{- if and $v.networkPolicy.enabled (eq $v.scan.engine "clamd") (not $v.clamd.enabled) (empty $v.networkPolicy.externalClamd.peers) -}}
{{- fail "networkPolicy.enabled with an external clamd: set networkPolicy.externalClamd.peers so scan pods may reach it (or disable networkPolicy)" -}}
{{- end -}}
{{- end -}}
