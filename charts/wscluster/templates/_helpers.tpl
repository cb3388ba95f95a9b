{{/*
Names. The operator's objects are "<fullname>-operator": with the release named "wscluster"
in namespace "wscluster-system" that is "wscluster-operator", the name the operator's own
defaults (--ring-public-url http://wscluster-operator.wscluster-system.svc:7400) expect.
*/}}
{{- define "wscluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wscluster.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 44 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 44 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 44 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "wscluster.operatorName" -}}
{{- printf "%s-operator" (include "wscluster.fullname" .) }}
{{- end }}

{{- define "wscluster.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wscluster.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wscluster.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object this chart creates; component is passed in. */}}
{{- define "wscluster.labels" -}}
helm.sh/chart: {{ include "wscluster.chart" .root }}
{{ include "wscluster.selectorLabels" . }}
app.kubernetes.io/part-of: wscluster
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "wscluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wscluster.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* image reference: repository[:tag][@digest] with the tag defaulting to appVersion. */}}
{{- define "wscluster.operatorImage" -}}
{{- $img := .Values.operator.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "wscluster.ringPublicUrl" -}}
{{- if .Values.operator.ringPublicUrl }}
{{- .Values.operator.ringPublicUrl }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "wscluster.operatorName" .) .Release.Namespace (int .Values.operator.ringPort) }}
{{- end }}
{{- end }}

{{/* Restricted pod-security settings shared by every container this chart runs. */}}
{{- define "wscluster.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
