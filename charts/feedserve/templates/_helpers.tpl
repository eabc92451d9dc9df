{{/* The release's resource name prefix. */}}
{{- define "feedserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains "feedserve" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-feedserve" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; the operator's children carry the same name label. */}}
{{- define "feedserve.labels" -}}
app.kubernetes.io/name: feedserve
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "feedserve.selector" -}}
app.kubernetes.io/name: feedserve
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "feedserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "feedserve.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches (a list); the release's when none are named. */}}
{{- define "feedserve.watchNamespaces" -}}
{{- $ns := .Values.operator.watchNamespaces | default (list .Release.Namespace) -}}
{{- toJson $ns -}}
{{- end -}}

{{/* The Secret (key `url`) holding the Redis URL. */}}
{{- define "feedserve.redisSecret" -}}
{{- .Values.redis.existingSecret | default .Values.redis.secretName -}}
{{- end -}}

{{/* Restricted Pod Security profile: pod level. */}}
{{- define "feedserve.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Restricted Pod Security profile: container level. */}}
{{- define "feedserve.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "feedserve.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .chart.AppVersion) -}}
{{- end -}}
