{{/* The policy file (routes.yaml) the pods read: policy.inline as written, or the chart's,
     built from .Values.policy. Strings go through toJson, which YAML reads as a quoted
     scalar, so no value can break the document's structure. */}}
{{- define "clerk-gateway.policy" -}}
{{- if .Values.policy.inline -}}
{{ .Values.policy.inline }}
{{- else -}}
{{- $p := .Values.policy -}}
{{- $forwardAuth := eq .Values.mode "forward-auth" -}}
{{- $webhook := include "clerk-gateway.webhookSecretKey" . -}}
# Written by the clerk-gateway chart from its `policy` values (docs/policy.md).
{{- if $forwardAuth }}
mode: forward-auth
{{- end }}
clerk:
  publishable_key: ${CLERK_PUBLISHABLE_KEY}
  secret_key: ${CLERK_SECRET_KEY}
  {{- if include "clerk-gateway.jwtKeyKey" . }}
  jwt_key: ${CLERK_JWT_KEY}
  {{- end }}
  authorized_parties: {{ toJson $p.authorizedParties }}
  {{- with $p.clerk }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- if $webhook }}
webhooks:
  secrets: ${CLERK_WEBHOOK_SECRET}
  {{- with $p.webhooks }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- if not $forwardAuth }}
upstream: ${UPSTREAM_URL}
{{- end }}
trusted_proxies: {{ toJson $p.trustedProxies }}
sign_in_url: {{ toJson $p.signInUrl }}
unauthorized_url: {{ toJson $p.unauthorizedUrl }}
role_claim: {{ toJson $p.roleClaim }}
default: {{ toJson $p.default }}
{{- with $p.extra }}
{{ toYaml . }}
{{- end }}
routes:
{{- if not (or $webhook $p.routes) }} []{{ end }}
{{- if $webhook }}
  - name: clerk-webhooks
    path: {{ toJson $p.webhookRoute.path }}
    methods: [POST]
    access: webhook
{{- end }}
{{- range $p.routes }}
  - {{ toYaml . | nindent 4 | trim }}
{{- end }}
{{- end }}
{{- end -}}
