{{/* Names. Every named template here reads only .Values, .Release and .Chart, so a parent
     chart can call them with this chart's scope: (index .Subcharts "clerk-gateway"). */}}
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

{{- define "clerk-gateway.chartLabel" -}}
{{- printf "%s-%s" .Chart.Name (.Chart.Version | default "0") | replace "+" "_" -}}
{{- end -}}

{{- define "clerk-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clerk-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "clerk-gateway.labels" -}}
{{ include "clerk-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | default "Helm" }}
helm.sh/chart: {{ include "clerk-gateway.chartLabel" . }}
{{- end -}}

{{/* The app of sidecar mode is labelled as itself, not as the gateway. */}}
{{- define "clerk-gateway.appName" -}}
{{- .Values.sidecar.appName | default .Values.sidecar.appContainer.name | default "app" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clerk-gateway.appFullname" -}}
{{- $name := include "clerk-gateway.appName" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "clerk-gateway.appSelectorLabels" -}}
app.kubernetes.io/name: {{ include "clerk-gateway.appName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "clerk-gateway.appLabels" -}}
{{ include "clerk-gateway.appSelectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service | default "Helm" }}
helm.sh/chart: {{ include "clerk-gateway.chartLabel" . }}
{{- end -}}

{{/* The labels of the pods the gateway runs in: its own pods, the chart-rendered app's, or
     (a parent chart's recipe) sidecar.selectorLabels. Empty when unknown. */}}
{{- define "clerk-gateway.podSelectorLabels" -}}
{{- if ne .Values.mode "sidecar" -}}
{{ include "clerk-gateway.selectorLabels" . }}
{{- else if .Values.sidecar.appContainer -}}
{{ include "clerk-gateway.appSelectorLabels" . }}
{{- else if .Values.sidecar.selectorLabels -}}
{{ toYaml .Values.sidecar.selectorLabels }}
{{- end -}}
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

{{- define "clerk-gateway.adminServiceName" -}}
{{- printf "%s-admin" (include "clerk-gateway.fullname" . | trunc 57 | trimSuffix "-") -}}
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

{{/* Secret keys. Each returns the key name in the Secret, or "" when the feature is off.
     No reference is ever `optional: true`: what is referenced must exist. */}}
{{- define "clerk-gateway.secretKeyKey" -}}
{{- if .Values.clerk.existingSecret -}}
{{- .Values.clerk.existingSecretKeys.secretKey -}}
{{- else -}}
CLERK_SECRET_KEY
{{- end -}}
{{- end -}}

{{- define "clerk-gateway.jwtKeyKey" -}}
{{- if .Values.clerk.existingSecret -}}
{{- .Values.clerk.existingSecretKeys.jwtKey -}}
{{- else if .Values.clerk.jwtKey -}}
CLERK_JWT_KEY
{{- end -}}
{{- end -}}

{{- define "clerk-gateway.webhookSecretKey" -}}
{{- if eq .Values.mode "forward-auth" -}}
{{- else if .Values.clerk.existingSecret -}}
{{- .Values.clerk.existingSecretKeys.webhookSecret -}}
{{- else if .Values.clerk.webhookSecret -}}
CLERK_WEBHOOK_SECRET
{{- end -}}
{{- end -}}

{{- define "clerk-gateway.terminationGracePeriodSeconds" -}}
{{- add .Values.shutdown.delaySeconds .Values.shutdown.drainTimeoutSeconds .Values.shutdown.graceMarginSeconds -}}
{{- end -}}

{{/* Pod annotations that roll pods when what they read changes. With hot reload the
     policy is re-read in place, so its checksum is left out on purpose. A parent chart puts
     them on its own pod template: include "clerk-gateway.checksums" (index .Subcharts
     "clerk-gateway"). */}}
{{- define "clerk-gateway.checksums" -}}
{{- if and (not .Values.hotReload.enabled) (not .Values.existingPolicyConfigMap) }}
checksum/policy: {{ include "clerk-gateway.policy" . | sha256sum }}
{{- end }}
{{- if not .Values.clerk.existingSecret }}
checksum/secret: {{ printf "%s|%s|%s" .Values.clerk.secretKey .Values.clerk.jwtKey .Values.clerk.webhookSecret | sha256sum }}
{{- end }}
{{- end -}}

{{/* The gateway container: the same spec standalone, forward-auth and as a sidecar. Its
     security context is its own; nothing here touches the pod's. */}}
{{- define "clerk-gateway.sidecarContainer" -}}
{{- $v := .Values -}}
{{- $secret := include "clerk-gateway.secretName" . -}}
- name: clerk-gateway
  image: {{ include "clerk-gateway.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    - run
    - --config
    - /etc/clerk-gateway/{{ $v.policyKey }}
    - --listen
    - 0.0.0.0:{{ $v.gateway.port }}
    - --admin-listen
    - 0.0.0.0:{{ $v.gateway.adminPort }}
    - --workers
    - {{ $v.gateway.workers | quote }}
    - --shutdown-delay
    - {{ $v.shutdown.delaySeconds | quote }}
    - --drain-timeout
    - {{ $v.shutdown.drainTimeoutSeconds | quote }}
    {{- if eq $v.mode "forward-auth" }}
    - --mode
    - forward-auth
    {{- end }}
  env:
    {{- if ne $v.mode "forward-auth" }}
    - name: UPSTREAM_URL
      value: {{ include "clerk-gateway.upstreamUrl" . | quote }}
    {{- end }}
    - name: CLERK_PUBLISHABLE_KEY
      {{- if $v.clerk.publishableKey }}
      value: {{ $v.clerk.publishableKey | quote }}
      {{- else }}
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: {{ $v.clerk.existingSecretKeys.publishableKey }}
      {{- end }}
    - name: CLERK_SECRET_KEY
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: {{ include "clerk-gateway.secretKeyKey" . }}
    {{- with include "clerk-gateway.jwtKeyKey" . }}
    - name: CLERK_JWT_KEY
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: {{ . }}
    {{- end }}
    {{- with include "clerk-gateway.webhookSecretKey" . }}
    - name: CLERK_WEBHOOK_SECRET
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: {{ . }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: {{ $v.gateway.portName }}
      containerPort: {{ $v.gateway.port }}
      protocol: TCP
    - name: {{ $v.gateway.adminPortName }}
      containerPort: {{ $v.gateway.adminPort }}
      protocol: TCP
  {{- if $v.startupProbe.enabled }}
  startupProbe:
    httpGet:
      path: /healthz
      port: {{ $v.gateway.adminPortName }}
    {{- toYaml (omit $v.startupProbe "enabled") | nindent 4 }}
  {{- end }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $v.gateway.adminPortName }}
    {{- toYaml $v.livenessProbe | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ $v.gateway.adminPortName }}
    {{- toYaml $v.readinessProbe | nindent 4 }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - name: clerk-gateway-policy
      mountPath: /etc/clerk-gateway
      readOnly: true
    - name: clerk-gateway-tmp
      mountPath: /tmp
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
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
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod fields shared by every pod this chart renders; the pod securityContext is left to
     the caller (the gateway's pods and the app's differ). */}}
{{- define "clerk-gateway.podCommon" -}}
serviceAccountName: {{ include "clerk-gateway.serviceAccountName" . }}
automountServiceAccountToken: false
terminationGracePeriodSeconds: {{ include "clerk-gateway.terminationGracePeriodSeconds" . }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
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
{{- with .Values.topologySpreadConstraints }}
{{- $selector := include "clerk-gateway.podSelectorLabels" $ | fromYaml }}
topologySpreadConstraints:
  {{- range . }}
  {{- $constraint := deepCopy . }}
  {{- if not (hasKey $constraint "labelSelector") }}
  {{- $_ := set $constraint "labelSelector" (dict "matchLabels" $selector) }}
  {{- end }}
  - {{ toYaml $constraint | nindent 4 | trim }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Where the standalone upstream is, for the NetworkPolicy's egress: the namespace named
     in upstream.url when it is a Service name, else networkPolicy.egress.upstream.to. */}}
{{- define "clerk-gateway.networkPolicy.upstreamPeers" -}}
{{- $to := .Values.networkPolicy.egress.upstream.to -}}
{{- if $to -}}
{{ toYaml $to }}
{{- else -}}
{{- $host := (urlParse .Values.upstream.url).hostname -}}
{{- $parts := splitList "." $host -}}
{{- $namespace := "" -}}
{{- if or (not $host) (regexMatch "^[0-9.]+$|:" $host) -}}
{{- else if eq (len $parts) 1 -}}
{{- $namespace = .Release.Namespace -}}
{{- else if and (ge (len $parts) 3) (eq (index $parts 2) "svc") -}}
{{- $namespace = index $parts 1 -}}
{{- end -}}
{{- if not $namespace -}}
{{- fail (printf "networkPolicy.egress.upstream.to is required: upstream.url host %q is not a Service name (name or name.namespace.svc...), so the chart cannot tell where it is" $host) -}}
{{- end -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ $namespace }}
{{- end -}}
{{- end -}}

{{/* Forward-auth: the annotations an ingress-nginx Ingress of your app needs to ask this
     gateway about every request. Printed by NOTES.txt; a parent chart can put them on its
     Ingress: include "clerk-gateway.forwardAuth.ingressNginxAnnotations" (index .Subcharts
     "clerk-gateway"). Without snippet annotations (often disabled), a 401 goes to the
     sign-in page and a 403 is shown as is: see docs/deployment.md. */}}
{{- define "clerk-gateway.forwardAuth.signInUrl" -}}
{{- $p := .Values.policy -}}
{{- if .Values.forwardAuth.signInUrl -}}
{{- .Values.forwardAuth.signInUrl -}}
{{- else if regexMatch "^https?://" $p.signInUrl -}}
{{- $p.signInUrl -}}
{{- else -}}
{{- printf "%s%s" (first $p.authorizedParties | default "https://app.example.com") $p.signInUrl -}}
{{- end -}}
{{- end -}}

{{- define "clerk-gateway.forwardAuth.ingressNginxAnnotations" -}}
nginx.ingress.kubernetes.io/auth-url: {{ printf "http://%s.%s.svc.cluster.local:%v/" (include "clerk-gateway.fullname" .) .Release.Namespace .Values.service.port | quote }}
nginx.ingress.kubernetes.io/auth-signin: {{ include "clerk-gateway.forwardAuth.signInUrl" . | quote }}
nginx.ingress.kubernetes.io/auth-signin-redirect-param: redirect_url
nginx.ingress.kubernetes.io/auth-response-headers: {{ join "," .Values.forwardAuth.responseHeaders | quote }}
{{- end -}}
