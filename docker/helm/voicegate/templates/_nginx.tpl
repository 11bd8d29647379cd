{{/*
The proxy's config, for nginx's http{} context: rendered into the proxy's ConfigMap, and with the chart's
default values it is docker/nginx/voicegate.conf (tests/deploy checks the two are equal).
*/}}
{{- define "voicegate.nginxConf" -}}
{{- $p := .Values.proxy -}}
{{- $port := int .Values.serve.port -}}
{{- $static := $p.staticReplicas -}}
{{- $suffix := printf ".%s.%s.svc.%s:%d" (include "voicegate.headless" .) .Release.Namespace .Values.clusterDomain $port -}}
# voicegate behind nginx (docs/scaling.md). Rendered by the Helm chart docker/helm/voicegate (templates/_nginx.tpl);
# goes in nginx's http{} context.
#
# Every connection of a session must reach the replica that holds it: a session id is
# `<replica-id>.<random>` and producers join with /v1/session?session=ID&token=TOKEN, so the replica is the
# id's prefix before the first '.'. Everything else (new sessions, the HTTP APIs, the page) goes to the
# least busy replica.
map $arg_session $voicegate_replica {
    "~^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)\." $1;
    default "";
}

map $voicegate_replica $voicegate_upstream {
    "" voicegate_any;
{{- if $static }}
    # Fixed addresses (proxy.staticReplicas): the replica id names an upstream below.
    default $voicegate_replica;
{{- else }}
    # The replica's own DNS name under the headless service (a StatefulSet pod's name is its replica id).
    default $voicegate_replica{{ $suffix }};
{{- end }}
}

# WebSocket upgrades pass through; other requests keep their upstream connection alive.
map $http_upgrade $voicegate_connection {
    default upgrade;
    "" "";
}
{{- if not $static }}

resolver {{ $p.resolver }} valid={{ $p.resolverValid }} ipv6=off;
resolver_timeout 5s;
{{- end }}

upstream voicegate_any {
    zone voicegate_any 64k;
    least_conn;
{{- if $static }}
{{- range $id := keys $static | sortAlpha }}
{{- if not (has $id $p.staticNotReady) }}
    server {{ get $static $id }} max_fails=1 fail_timeout=5s;
{{- end }}
{{- end }}
{{- else }}
    # Ready replicas only: a draining (not ready) or terminating one drops out of this name, while its own
    # name under the session service above stays until it is gone.
    server {{ include "voicegate.readyService" . }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:{{ $port }} resolve max_fails=1 fail_timeout=5s;
{{- end }}
    keepalive 16;
}
{{- if $static }}
{{- range $id := keys $static | sortAlpha }}

upstream {{ $id }} {
    server {{ get $static $id }};
}
{{- end }}
{{- end }}

server {
    listen {{ with $p.listenAddress }}{{ . }}:{{ end }}{{ $p.listenPort }};
    client_max_body_size {{ $p.clientMaxBodySize }};

    proxy_http_version 1.1;
    proxy_set_header Host $host;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $voicegate_connection;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    # Audio streams out as it is made (OpenAI/ElevenLabs streamed responses): no response buffering. Request
    # bodies (small JSON) are buffered, so a request refused with 503 can be sent again to another replica.
    proxy_buffering off;
    proxy_connect_timeout 5s;
    # A draining replica answers 503 to new work: try another one (only within voicegate_any; a session's own
    # replica has no alternative). Synthesis requests have no side effects, so POSTs may be retried too.
    proxy_next_upstream error timeout http_502 http_503 non_idempotent;
    proxy_next_upstream_tries 3;

    # Sessions: WebSockets that live as long as their clients (an idle one closes after sessionTimeout).
    location /v1/session {
        proxy_pass http://$voicegate_upstream;
        proxy_read_timeout {{ $p.sessionTimeout }}s;
        proxy_send_timeout {{ $p.sessionTimeout }}s;
    }

    location / {
        proxy_pass http://$voicegate_upstream;
        proxy_read_timeout {{ $p.apiTimeout }}s;
        proxy_send_timeout {{ $p.apiTimeout }}s;
    }

    # The proxy's own liveness, answered here.
    location = /nginx-healthz {
        access_log off;
        return 200 "ok\n";
    }
}
{{ end -}}
