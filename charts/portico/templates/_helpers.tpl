{{- define "portico.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portico.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "portico.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "portico.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "portico.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portico.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portico.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "portico.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "portico.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "portico.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The command line. `--kubernetes` and `--issue-certificates` are the Kubernetes provider's flags (issue 6); the
others are `portico run`'s (crates/portico/src/main.rs). Keep them in sync.
*/}}
{{- define "portico.args" -}}
- run
- --kubernetes
- --state-dir=/var/lib/portico
- --admin=0.0.0.0:{{ .Values.admin.port }}
- --drain-seconds={{ .Values.controller.drainSeconds }}
- --cluster-resource-namespace={{ .Values.controller.clusterResourceNamespace }}
# In a pod traffic arrives at the pod's address (the Service translates the VIP): listen on every address.
- --listen-any
{{- with .Values.controller.defaultIngressClass }}
- --default-ingress-class={{ . }}
{{- end }}
{{- if .Values.controller.issueCertificates }}
- --issue-certificates
{{- end }}
{{- if .Values.controller.manageGatewayServices }}
- --gateway-services-namespace={{ .Release.Namespace }}
- --gateway-service-selector=app.kubernetes.io/name={{ include "portico.name" . }},app.kubernetes.io/instance={{ .Release.Name }}
{{- end }}
{{- range .Values.controller.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}
