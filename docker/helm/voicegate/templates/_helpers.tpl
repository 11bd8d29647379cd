{{/* Names: the StatefulSet's pods are <fullname>-<ordinal>, which is each replica's id. */}}
{{- define "voicegate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "voicegate.headless" -}}
{{- printf "%s-headless" (include "voicegate.fullname" .) -}}
{{- end -}}

{{- define "voicegate.readyService" -}}
{{- printf "%s-ready" (include "voicegate.fullname" .) -}}
{{- end -}}

{{- define "voicegate.proxyName" -}}
{{- printf "%s-proxy" (include "voicegate.fullname" .) -}}
{{- end -}}

{{- define "voicegate.secretName" -}}
{{- default (include "voicegate.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "voicegate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "voicegate.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: replica
{{- end -}}

{{- define "voicegate.proxySelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end -}}

{{/* The most replicas that can exist. */}}
{{- define "voicegate.maxReplicas" -}}
{{- if .Values.autoscaling.enabled -}}{{ .Values.autoscaling.maxReplicas }}{{- else -}}{{ .Values.replicaCount }}{{- end -}}
{{- end -}}

{{- define "voicegate.terminationGrace" -}}
{{- add (int .Values.preStopSleep) (int (ceil .Values.serve.drainGrace)) (int .Values.terminationMargin) -}}
{{- end -}}

{{- define "voicegate.turnName" -}}
{{- printf "%s-turn" (include "voicegate.fullname" .) -}}
{{- end -}}

{{/* The Secret holding coturn's static-auth-secret, which the replicas share (VOICEGATE_TURN_SECRET). */}}
{{- define "voicegate.turnSecretName" -}}
{{- default (include "voicegate.turnName" .) .Values.turn.existingSecret -}}
{{- end -}}

{{- define "voicegate.turnSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: turn
{{- end -}}
