{{- define "testapp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "testapp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains (include "testapp.name" .) .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "testapp.name" .) | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "testapp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "testapp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "testapp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "testapp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "testapp.secretName" -}}
{{- default (printf "%s-tls-secret" (include "testapp.fullname" .)) .Values.certificate.secretName -}}
{{- end -}}

{{- define "testapp.gatewayName" -}}
{{- default (printf "%s-gateway" (include "testapp.fullname" .)) .Values.httproute.gateway.name -}}
{{- end -}}

{{/* The first hostname: certificate common name, Ingress rule host, HostRule/HTTPRule fqdn. */}}
{{- define "testapp.primary" -}}
{{- required "hostnames must list at least one name" (first .Values.hostnames) -}}
{{- end -}}

{{/* The names external-dns publishes: externalDns.hostnames, else every hostname but the first. */}}
{{- define "testapp.dnsNames" -}}
{{- if .Values.externalDns.hostnames -}}
{{- join "," .Values.externalDns.hostnames -}}
{{- else -}}
{{- join "," (rest .Values.hostnames) -}}
{{- end -}}
{{- end -}}

{{- define "testapp.targetPort" -}}
{{- if .Values.reencrypt.enabled }}8443{{ else }}8080{{ end -}}
{{- end -}}
