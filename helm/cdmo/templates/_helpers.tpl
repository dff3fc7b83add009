{{/* Names, labels and the few values that several templates share. */}}

{{- define "cdmo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cdmo.fullname" -}}
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

{{/* <fullname>-<suffix> within 63 characters, the suffix kept whole: Service names must be DNS
labels. Pass (list $ "operator-metrics"). Names that fit are the same as plain <fullname>-<suffix>. */}}
{{- define "cdmo.componentName" -}}
{{- $suffix := index . 1 -}}
{{- $base := include "cdmo.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base $suffix -}}
{{- end -}}

{{- define "cdmo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "cdmo.labels" -}}
helm.sh/chart: {{ include "cdmo.chart" . }}
app.kubernetes.io/name: {{ include "cdmo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cdmo
{{- end -}}

{{/* Selector labels of one component (operator or agent): pass (list $ "operator"). */}}
{{- define "cdmo.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "cdmo.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "cdmo.componentLabels" -}}
{{ include "cdmo.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "cdmo.operatorServiceAccount" -}}
{{- default (printf "%s-operator" (include "cdmo.fullname" .)) .Values.serviceAccount.operator.name -}}
{{- end -}}

{{- define "cdmo.agentServiceAccount" -}}
{{- default (printf "%s-agent" (include "cdmo.fullname" .)) .Values.serviceAccount.agent.name -}}
{{- end -}}

{{/* REPOSITORY@DIGEST when a digest is given (it names the content, a tag may move), else REPOSITORY:TAG. */}}
{{- define "cdmo.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The ClusterKopfPeering object's name: one per release unless set, so releases never share one. */}}
{{- define "cdmo.peeringName" -}}
{{- default (include "cdmo.fullname" .) .Values.operator.peering.name -}}
{{- end -}}

{{/* KEY=VALUE of the partitioning label, as CDMO_PARTITION_LABEL wants it. */}}
{{- define "cdmo.partitionLabel" -}}
{{- printf "%s=%s" .Values.partitioning.labelKey .Values.partitioning.labelValue -}}
{{- end -}}

{{/* A number as an env value: floats keep their point (5.0, not 5), as cdmo.config parses either. */}}
{{- define "cdmo.envNumber" -}}
{{- . | toString | quote -}}
{{- end -}}

{{/* An integer knob as an env value. A values file's numbers reach templates as floats, and
toString writes a million as 1e+06, which cdmo.config's int() refuses: int64 first. */}}
{{- define "cdmo.envInt" -}}
{{- . | int64 | toString | quote -}}
{{- end -}}

{{/* Whether the ValidatingAdmissionPolicy renders: true, false, or auto (the cluster serves v1). */}}
{{- define "cdmo.admissionPolicyEnabled" -}}
{{- $want := .Values.admissionPolicy.enabled -}}
{{- if eq (toString $want) "auto" -}}
{{- if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy" -}}true{{- end -}}
{{- else if $want -}}true{{- end -}}
{{- end -}}

{{/* Every value the chart hands to cdmo as an environment variable or a flag, and what to give.
A key set to null (--set operator.batchIdleSeconds=null, or null in a values file) is removed
before values.schema.json is checked, so the schema never sees it; rendered, it became the text
"<nil>" (or 0, or "") and the pods crash-looped. tests/chart/test_values_schema.py nulls each
value whose description in values.schema.json names a variable, so a new one must be listed here. */}}
{{- define "cdmo.envValues" -}}
partitioning.labelKey: a label key
partitioning.labelValue: a label value
admissionPolicy.enabled: auto, true or false
admissionPolicy.validationActions: a list such as [Deny]
operator.peering.enabled: true or false
operator.peering.name: a name ("" for the release's full name)
operator.batchIdleSeconds: a number of seconds
operator.batchMaxSeconds: a number of seconds
operator.staleTimeoutSeconds: a number of seconds
operator.pendingGraceSeconds: a number of seconds
operator.planResyncSeconds: a number of seconds
operator.metricsPort: a port number
operator.healthPort: a port number
operator.watch.serverTimeoutSeconds: a number of seconds
operator.watch.clientTimeoutSeconds: a number of seconds
operator.watch.connectTimeoutSeconds: a number of seconds
operator.watch.listChunkSize: a whole number (0 for one response)
operator.prewarm.enabled: true or false
operator.prewarm.windowSeconds: a number of seconds
operator.prewarm.horizonSeconds: a number of seconds
operator.prewarm.maxPerProfile: a whole number
operator.drain.maxFraction: a share from 0 to 1
operator.drain.afterSeconds: a number of seconds
operator.drain.maxUsedShare: a share from 0 to 1
operator.drain.yieldAfterSeconds: a number of seconds
operator.drain.reclaimMaxUsedShare: a share from 0 to 1
operator.defrag.opsPerHour: a whole number (0 for off)
operator.defrag.intervalSeconds: a number of seconds
agent.backend: nvml or simulated
agent.sim.gpus: GPU models such as h100-80gb,h100-80gb, or ""
agent.sim.state: a file under /tmp, or ""
agent.refreshStrategy: builtin, sighup, delete-pod or none
agent.podResourcesDir: a directory
agent.devicePluginDir: a directory
agent.deviceListStrategy: volume-mounts, envvar or cdi-annotations
agent.deviceIdStrategy: uuid or index
agent.cdiKind: a CDI kind such as nvidia.com/gpu
agent.advertiseWholeGpus: true or false
agent.disableHealthchecks: XID numbers, all, xids or ""
agent.reconfiguringTaint: KEY:EFFECT or ""
agent.devicePlugin.namespace: a namespace
agent.devicePlugin.selector: a label selector
agent.devicePlugin.process: a process name
agent.resyncSeconds: a number of seconds
agent.livenessSeconds: a number of seconds (0 for never)
agent.refreshTimeoutSeconds: a number of seconds
agent.refreshPollSeconds: a number of seconds
agent.watchTimeoutSeconds: a number of seconds
agent.backoffInitialSeconds: a number of seconds
agent.enableMig: true or false
agent.autoEnableMig: true or false
agent.metricsPort: a port number
agent.logFormat: auto, json or console
webhook.port: a port number
webhook.metricsPort: a port number
webhook.defaultModel: a GPU model or ""
webhook.fractionMatch: compute+memory, compute or memory
webhook.cfgiReplicasPerGpu: a whole number
webhook.metagpuUnitsPerGpu: a whole number
webhook.nodesRefreshSeconds: a number of seconds
webhook.logFormat: auto, json or console
{{- end -}}

{{/* Fail on the first value of cdmo.envValues that is null or missing, naming it. Walks the
dotted path itself: a nulled parent (operator.prewarm=null) is reported as well. */}}
{{- define "cdmo.requireEnvValues" -}}
{{- range $path, $what := include "cdmo.envValues" . | fromYaml -}}
{{- $at := $.Values -}}
{{- $found := true -}}
{{- range $key := splitList "." $path -}}
{{- if and $found (kindIs "map" $at) (hasKey $at $key) -}}
{{- $at = index $at $key -}}
{{- else -}}
{{- $found = false -}}
{{- end -}}
{{- end -}}
{{- if or (not $found) (kindIs "invalid" $at) -}}
{{- fail (printf "%s is null or missing: give %s, or leave it out of your values to keep the chart's default" $path $what) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Refuse combinations that cannot work, with one line that says what to change. */}}
{{- define "cdmo.validate" -}}
{{- include "cdmo.requireEnvValues" . -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.peering.enabled) -}}
{{- fail (printf "operator.replicas is %d but operator.peering.enabled is false: several replicas need kopf peering; set operator.replicas=1 or operator.peering.enabled=true" (int .Values.operator.replicas)) -}}
{{- end -}}
{{- if eq (int .Values.operator.metricsPort) (int .Values.operator.healthPort) -}}
{{- fail (printf "operator.metricsPort and operator.healthPort are both %d: the operator serves each on its own port; set one of them to another port" (int .Values.operator.metricsPort)) -}}
{{- end -}}
{{- if and .Values.webhook.enabled (eq (int .Values.webhook.metricsPort) (int .Values.webhook.port)) -}}
{{- fail (printf "webhook.metricsPort and webhook.port are both %d: the webhook serves HTTPS and its metrics on ports of their own; set one of them to another port" (int .Values.webhook.port)) -}}
{{- end -}}
{{- range $component := list "operator" "agent" "webhook" -}}
{{- range $key := list "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component" -}}
{{- if hasKey ((index $.Values $component).podLabels | default dict) $key -}}
{{- fail (printf "%s.podLabels sets %s, one of the labels the chart selects the %s's pods by: remove it (the chart sets it)" $component $key $component) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.agent.backend "simulated") (not (or .Values.agent.sim.gpus .Values.agent.sim.state)) -}}
{{- fail "agent.backend is simulated but agent.sim.gpus and agent.sim.state are empty: say which GPUs to simulate (agent.sim.gpus=h100-80gb,h100-80gb)" -}}
{{- end -}}
{{- end -}}

{{/* The fractional-GPU webhook: its name, service account, and whether cert-manager makes its certificate. */}}
{{- define "cdmo.webhookName" -}}
{{- include "cdmo.componentName" (list . "webhook") -}}
{{- end -}}

{{- define "cdmo.webhookCertManager" -}}
{{- $want := .Values.webhook.tls.certManager -}}
{{- if eq (toString $want) "auto" -}}
{{- if .Capabilities.APIVersions.Has "cert-manager.io/v1" -}}true{{- end -}}
{{- else if $want -}}true{{- end -}}
{{- end -}}
