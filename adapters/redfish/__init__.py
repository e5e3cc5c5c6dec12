"""The Redfish adapter: power and identity through each BMC (`client`, `power`), and events in — the push
listener, subscription management, SSE streams and health polling.

Modules: `client` (the BMC connections, shared), `power` (`RedfishPower`: power and health, the
`PowerControl` port), `payload` (Event payloads → Events), `reader` (the reads the workers share), and
four independent parts, each producing normalized `monitor.core.events.Event`s on one `asyncio.Queue`:

- `listener.RedfishEventListener`: `POST /api/v1/events/redfish[/{token}]`, where BMCs push `#Event`
  payloads (source `redfish`). Every BMC has its own token, `bmc_token(secret, bmc_url)` (HMAC-SHA256 of the
  master secret and the BMC URL, urlsafe base64), sent back to us in an `Authorization: Bearer` header
  (or as a Basic password), in the Event's `Context` ("failover-monitor:<token>"), or in the path. The
  token identifies the BMC, so the Event's `sender` is that BMC's host address and
  `attributes.bmc_service` its service (scheme://host:port): on a service several inventory servers
  share, the resolver attributes each event by its OriginOfCondition (monitor/pipeline/resolve.py),
  never by the sender alone.
- `subscriptions.SubscriptionManager`: makes sure each BMC's EventService holds exactly one correct
  subscription of ours (created, repaired, our stale ones removed) and never touches another consumer's.
- `sse.SseFollower`: follows each BMC's `ServerSentEventUri` (source `redfish-sse`).
- `poller.HealthPoller`: polls each BMC's `Status.Health`/`HealthRollup`; a change becomes an Event
  (source `redfish-poll`, `message_key` "HealthChanged").

BMC requests go through the DMTF `redfish` library's async client (adapters/redfish/client.py, shared
with adapters/redfish/power.py), with a timeout on every request; a BMC endpoint without credentials
(empty username) is used unauthenticated, which is also the only way the library talks plain HTTP
(read-only peers such as `sushy-static`). SSE needs a streaming read, so it uses aiohttp directly
(Basic auth).

Metrics (prefix `failover_monitor_`; all counters):

- `redfish_events_received_total{source}`: Events put on the queue (`redfish`, `redfish-sse`,
  `redfish-poll`).
- `redfish_events_dropped_total{reason}`: pushes refused, per request: `sender` (403), `unauthorized`
  (401), `too_large` (413), `bad_json` and `not_event` (400), `error` (500); per event: `queue_full`
  (503 for a push; SSE and poll events too); SSE frames: `sse_bad_frame`, `sse_too_large`.
- `redfish_subscriptions_total{result}`: reconcile outcomes per BMC: `created`, `kept`, `repaired`,
  `removed-stale`, `skipped`, `error`.
- `redfish_sse_connections_total{result}`: `connected`, `error`, `no_sse`.
- `redfish_health_polls_total{result}`: `ok`, `error`, `unknown`.
"""
