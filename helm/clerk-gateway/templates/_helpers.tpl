{{/* Names. They use only .Values, .Release and .Chart, so a parent chart can call the
     sidecar templates with a dict context (see docs/deployment.md). */}}
{{- define "clerk-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clerk-gateway.fullname" -}}
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

{{- define "clerk-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clerk-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "clerk-gateway.labels" -}}
{{ include "clerk-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | default "Helm" }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name (.Chart.Version | default "0") | replace "+" "_" }}
{{- end -}}

{{- define "clerk-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "clerk-gateway.secretName" -}}
{{- .Values.clerk.existingSecret | default (include "clerk-gateway.fullname" .) -}}
{{- end -}}

{{- define "clerk-gateway.configMapName" -}}
{{- .Values.existingPolicyConfigMap | default (include "clerk-gateway.fullname" .) -}}
{{- end -}}

{{- define "clerk-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "clerk-gateway.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "clerk-gateway.upstreamUrl" -}}
{{- if eq .Values.mode "sidecar" -}}
{{- printf "http://127.0.0.1:%v" .Values.sidecar.appPort -}}
{{- else -}}
{{- .Values.upstream.url -}}
{{- end -}}
{{- end -}}

{{/* Pod annotations that roll pods when what they read changes. With hot reload the
     policy is re-read in place, so its checksum is left out on purpose. */}}
{{- define "clerk-gateway.checksums" -}}
{{- if and (not .Values.hotReload.enabled) (not .Values.existingPolicyConfigMap) }}
checksum/policy: {{ .Values.policy | sha256sum }}
{{- end }}
{{- if not .Values.clerk.existingSecret }}
checksum/secret: {{ printf "%s|%s|%s" .Values.clerk.secretKey .Values.clerk.jwtKey .Values.clerk.webhookSecret | sha256sum }}
{{- end }}
{{- end -}}

{{/* The gateway container: the same spec standalone and as a sidecar. */}}
{{- define "clerk-gateway.sidecarContainer" -}}
- name: clerk-gateway
  image: {{ include "clerk-gateway.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - run
    - --config
    - /etc/clerk-gateway/{{ .Values.policyKey }}
    - --listen
    - 0.0.0.0:{{ .Values.gateway.port }}
    - --admin-listen
    - 0.0.0.0:{{ .Values.gateway.adminPort }}
    - --workers
    - {{ .Values.gateway.workers | quote }}
    - --drain-timeout
    - {{ .Values.gateway.drainTimeoutSeconds | quote }}
  env:
    - name: UPSTREAM_URL
      value: {{ include "clerk-gateway.upstreamUrl" . | quote }}
    - name: CLERK_PUBLISHABLE_KEY
      value: {{ .Values.clerk.publishableKey | quote }}
    - name: CLERK_SECRET_KEY
      valueFrom:
        secretKeyRef:
          name: {{ include "clerk-gateway.secretName" . }}
          key: CLERK_SECRET_KEY
          optional: true
    - name: CLERK_JWT_KEY
      valueFrom:
        secretKeyRef:
          name: {{ include "clerk-gateway.secretName" . }}
          key: CLERK_JWT_KEY
          optional: true
    - name: CLERK_WEBHOOK_SECRET
      valueFrom:
        secretKeyRef:
          name: {{ include "clerk-gateway.secretName" . }}
          key: CLERK_WEBHOOK_SECRET
          optional: true
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: http
      containerPort: {{ .Values.gateway.port }}
      protocol: TCP
    - name: admin
      containerPort: {{ .Values.gateway.adminPort }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    {{- toYaml .Values.livenessProbe | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    {{- toYaml .Values.readinessProbe | nindent 4 }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: clerk-gateway-policy
      mountPath: /etc/clerk-gateway
      readOnly: true
    - name: clerk-gateway-tmp
      mountPath: /tmp
{{- end -}}

{{/* Volumes the gateway container needs. The whole ConfigMap is mounted (no subPath),
     so kubelet can update the file in place for hot reload. */}}
{{- define "clerk-gateway.sidecarVolumes" -}}
- name: clerk-gateway-policy
  configMap:
    name: {{ include "clerk-gateway.configMapName" . }}
- name: clerk-gateway-tmp
  emptyDir:
    sizeLimit: 16Mi
{{- end -}}

{{- define "clerk-gateway.podCommon" -}}
serviceAccountName: {{ include "clerk-gateway.serviceAccountName" . }}
automountServiceAccountToken: false
terminationGracePeriodSeconds: {{ add .Values.gateway.drainTimeoutSeconds 5 }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
