{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "kubeaccel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of every object of the release (63 chars max, DNS label).
A release whose name already contains the chart name is not repeated.
*/}}
{{- define "kubeaccel.fullname" -}}
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

{{/*
chart label value: <name>-<version>, "+" is not allowed in label values.
*/}}
{{- define "kubeaccel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of the release (Deployment selectors are immutable).
*/}}
{{- define "kubeaccel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeaccel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels of every object of the chart (also used by the generated crd.yaml).
*/}}
{{- define "kubeaccel.labels" -}}
helm.sh/chart: {{ include "kubeaccel.chart" . }}
{{ include "kubeaccel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeaccel
{{- end }}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "kubeaccel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubeaccel.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: a digest pins it; the tag defaults to
the chart's appVersion. Call with (dict "image" .Values.image "root" .).
*/}}
{{- define "kubeaccel.image" -}}
{{- $img := .image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/*
The runtime image the operator gives to the shard Deployments.
*/}}
{{- define "kubeaccel.runtimeImage" -}}
{{- include "kubeaccel.image" (dict "image" .Values.runtimeImage "root" .) }}
{{- end }}

{{/*
The optimizer image the operator gives to the optimization Jobs.
*/}}
{{- define "kubeaccel.optimizerImage" -}}
{{- include "kubeaccel.image" (dict "image" .Values.optimizerImage "root" .) }}
{{- end }}

{{/*
The GPU runtime image: gpuRuntimeImage, else the runtime repository with tag "<tag>-gpu"
(<tag>: runtimeImage.tag, else the chart's appVersion), like the operator's own default.
*/}}
{{- define "kubeaccel.gpuRuntimeImage" -}}
{{- $gpu := .Values.gpuRuntimeImage }}
{{- $tag := printf "%s-gpu" (default .Chart.AppVersion .Values.runtimeImage.tag) }}
{{- $img := dict "repository" (default .Values.runtimeImage.repository $gpu.repository) "tag" (default $tag $gpu.tag) "digest" $gpu.digest }}
{{- include "kubeaccel.image" (dict "image" $img "root" .) }}
{{- end }}
