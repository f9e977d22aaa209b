{{/* What values.schema.json cannot say: requirements that depend on other values, each
     failing with a message that names the value to set. Rendered by validate.yaml. */}}
{{- define "clerk-gateway.validate" -}}
{{- $v := .Values -}}
{{- $c := $v.clerk -}}

{{- /* Clerk's keys. */ -}}
{{- if $c.existingSecret -}}
  {{- range $key := list "secretKey" "jwtKey" "webhookSecret" -}}
    {{- if index $c $key -}}
      {{- fail (printf "clerk.%s is ignored with clerk.existingSecret: put it in Secret %q and name its key in clerk.existingSecretKeys.%s" $key $c.existingSecret $key) -}}
    {{- end -}}
  {{- end -}}
  {{- if not $c.existingSecretKeys.secretKey -}}
    {{- fail (printf "clerk.existingSecretKeys.secretKey is required: the key of Secret %q that holds the secret key (sk_...)" $c.existingSecret) -}}
  {{- end -}}
{{- else if not $c.secretKey -}}
  {{- fail "clerk.secretKey is required: your Clerk secret key (sk_live_... or sk_test_...), or clerk.existingSecret naming a Secret that holds it" -}}
{{- end -}}
{{- if not (or $c.publishableKey (and $c.existingSecret $c.existingSecretKeys.publishableKey)) -}}
  {{- fail "clerk.publishableKey is required: your Clerk publishable key (pk_live_... or pk_test_...), or clerk.existingSecret with the key named in clerk.existingSecretKeys.publishableKey" -}}
{{- end -}}

{{- /* The chart's own policy must be one a user can ship. */ -}}
{{- if not (or $v.policy.inline $v.existingPolicyConfigMap) -}}
  {{- if not $v.policy.authorizedParties -}}
    {{- fail "policy.authorizedParties is required: your app's origin(s), e.g. --set 'policy.authorizedParties={https://app.example.com}'. A session token whose azp is not listed is refused." -}}
  {{- end -}}
  {{- if not $v.policy.trustedProxies -}}
    {{- fail "policy.trustedProxies is required: the CIDRs of your ingress controller or load balancer, e.g. --set 'policy.trustedProxies={10.0.0.0/8}'. Only they may set X-Forwarded-Proto/-Host, so redirects say https:// behind TLS." -}}
  {{- end -}}
  {{- range $key := list "publishable_key" "secret_key" "jwt_key" "authorized_parties" -}}
    {{- if hasKey $v.policy.clerk $key -}}
      {{- fail (printf "policy.clerk.%s is written by the chart: set clerk.* / policy.authorizedParties instead" $key) -}}
    {{- end -}}
  {{- end -}}
  {{- if hasKey $v.policy.webhooks "secrets" -}}
    {{- fail "policy.webhooks.secrets is written by the chart: set clerk.webhookSecret or clerk.existingSecretKeys.webhookSecret" -}}
  {{- end -}}
  {{- range $key := list "mode" "clerk" "webhooks" "upstream" "trusted_proxies" "sign_in_url" "unauthorized_url" "role_claim" "default" "routes" -}}
    {{- if hasKey $v.policy.extra $key -}}
      {{- fail (printf "policy.extra.%s is written by the chart: use the matching policy.* value (or policy.inline for a policy of your own)" $key) -}}
    {{- end -}}
  {{- end -}}
{{- end -}}

{{- /* Modes. */ -}}
{{- if and (eq $v.mode "standalone") (not $v.upstream.url) -}}
  {{- fail "upstream.url is required in standalone mode: the Service the gateway fronts, e.g. http://my-app.my-namespace.svc.cluster.local:80" -}}
{{- end -}}
{{- if and $v.ingress.enabled (ne $v.mode "standalone") -}}
  {{- fail (printf "ingress.enabled renders an Ingress to the gateway's Service in standalone mode only; in %s mode put the Ingress in front of your app (forward-auth: with the annotations the install notes print)" $v.mode) -}}
{{- end -}}
{{- if and (eq $v.mode "forward-auth") (or $c.webhookSecret $c.existingSecretKeys.webhookSecret) -}}
  {{- fail "forward-auth mode cannot verify webhooks (the ingress does not pass the body on): leave clerk.webhookSecret and clerk.existingSecretKeys.webhookSecret empty, and run a proxy-mode release for the webhook route" -}}
{{- end -}}

{{- /* Ports: the gateway shares a pod with your app in sidecar mode. */ -}}
{{- $g := $v.gateway -}}
{{- if eq $g.portName $g.adminPortName -}}
  {{- fail (printf "gateway.portName and gateway.adminPortName must differ (both %q)" $g.portName) -}}
{{- end -}}
{{- if eq (int $g.port) (int $g.adminPort) -}}
  {{- fail (printf "gateway.port and gateway.adminPort must differ (both %v)" $g.port) -}}
{{- end -}}
{{- if eq $v.mode "sidecar" -}}
  {{- if has (int $v.sidecar.appPort) (list (int $g.port) (int $g.adminPort)) -}}
    {{- fail (printf "sidecar.appPort %v is one of the gateway's ports (gateway.port, gateway.adminPort): they share the pod's network" $v.sidecar.appPort) -}}
  {{- end -}}
  {{- range $v.sidecar.appContainer.ports -}}
    {{- if has .name (list $g.portName $g.adminPortName) -}}
      {{- fail (printf "sidecar.appContainer port name %q is also a gateway port name: change gateway.portName / gateway.adminPortName" .name) -}}
    {{- end -}}
    {{- if has (int .containerPort) (list (int $g.port) (int $g.adminPort)) -}}
      {{- fail (printf "sidecar.appContainer containerPort %v is also a gateway port" .containerPort) -}}
    {{- end -}}
  {{- end -}}
  {{- if and (not (include "clerk-gateway.podSelectorLabels" .)) (or $v.serviceMonitor.enabled $v.networkPolicy.enabled) -}}
    {{- fail "sidecar mode without sidecar.appContainer: set sidecar.selectorLabels to your app's pod labels so the admin Service, ServiceMonitor and NetworkPolicy can select its pods" -}}
  {{- end -}}
{{- end -}}
{{- end -}}
