/*
 * stream_ops: stream control calls picked by the request's :path (scratch differential of
 * session 3, recorded from Envoy 1.40): /close-req, /close-req-pause (proxy_close_stream on the
 * request), /local-twice (two local replies), /local-continue, /local-continue-ret, /done,
 * /effective (proxy_set_effective_context to an unknown id), /status-bad (headers result 77),
 * /close-resp, /resp-local-continue, /rsb-stop, /rsb-close (response side), and for request
 * bodies /body-stop (1), /body-nobuf (3), /body-watermark (2) on the data frame, /body-bad (9).
 * Callouts: /co-unknown (cluster "nope"), /co-noauth (no :authority), /co-body (POST with a
 * body), /co-get; the answer's counts, :status, body slices, pairs and maps are logged.
 * Logs each call's status ("close 0") and "rqb <size>" / "rsb <size>" per body call.
 */
#include "proxy_wasm.h"
IMPORT(proxy_close_stream) uint32_t proxy_close_stream(uint32_t);
IMPORT(proxy_done) uint32_t proxy_done(void);
static char path[256];
static int has(const char *p) { return strcmp(path, p) == 0; }
static void logn(const char *what, uint32_t v) {
  char line[96] = "";
  sb_cat(line, sizeof line, what, strlen(what));
  sb_cat(line, sizeof line, " ", 1);
  sb_u32(line, sizeof line, v);
  log_msg(LOG_INFO, line);
}
static uint32_t local(uint32_t code, const char *body) {
  return proxy_send_local_response(code, "zz", 2, body, strlen(body), "", 0, -1);
}
static uint32_t callout(const char *cluster, int auth, const char *body);

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  bytes_t v;
  path[0] = 0;
  if (get_header(MAP_REQUEST_HEADERS, ":path", &v) == WASM_OK) {
    memcpy(path, v.data, v.size < 255 ? v.size : 255);
    path[v.size < 255 ? v.size : 255] = 0;
  }
  if (has("/close-req")) { logn("close", proxy_close_stream(STREAM_REQUEST)); return ACTION_CONTINUE; }
  if (has("/close-req-pause")) { logn("close", proxy_close_stream(STREAM_REQUEST)); return ACTION_PAUSE; }
  if (has("/local-twice")) { logn("l1", local(401, "one")); logn("l2", local(402, "two")); return ACTION_PAUSE; }
  if (has("/local-continue")) { logn("l1", local(401, "one")); logn("cont", proxy_continue_stream(STREAM_REQUEST)); return ACTION_CONTINUE; }
  if (has("/local-continue-ret")) { logn("l1", local(401, "one")); return ACTION_CONTINUE; }
  if (has("/done")) { logn("done", proxy_done()); }
  if (has("/effective")) { logn("eff", proxy_set_effective_context(999)); logn("eff1", proxy_set_effective_context(1)); log_msg(LOG_INFO, "after"); }
  if (has("/pause")) { return ACTION_PAUSE; }
  if (has("/co-unknown")) { callout("nope", 1, ""); return ACTION_CONTINUE; }
  if (has("/co-noauth")) { callout("callout", 0, ""); return ACTION_CONTINUE; }
  if (has("/co-body")) { return callout("callout", 1, "xyz-body-text") == WASM_OK ? ACTION_PAUSE : ACTION_CONTINUE; }
  if (has("/co-get")) { return callout("callout", 1, "") == WASM_OK ? ACTION_PAUSE : ACTION_CONTINUE; }
  if (has("/status-bad")) { return 77; }
  return ACTION_CONTINUE;
}
static uint32_t callout(const char *cluster, int auth, const char *body) {
  const char *keys[] = {":method", ":path", ":authority", "x-co"};
  const char *values[] = {body[0] ? "POST" : "GET", "/from-ops", "callout.test", "1"};
  const char *k2[] = {":method", ":path", "x-co"};
  const char *v2[] = {"GET", "/from-ops", "1"};
  size_t size;
  char *headers = auth ? serialize_pairs(keys, values, 4, &size) : serialize_pairs(k2, v2, 3, &size);
  uint32_t token = 0;
  uint32_t rc = proxy_http_call(cluster, strlen(cluster), headers, size, body, strlen(body), NULL,
                                0, 5000, &token);
  free(headers);
  logn("http_call", rc);
  logn("token", token);
  return rc;
}

EXPORT(proxy_on_http_call_response)
void proxy_on_http_call_response(uint32_t ctx, uint32_t token, uint32_t nh, uint32_t size,
                                 uint32_t nt) {
  logn("answer headers", nh);
  logn("answer body", size);
  logn("answer trailers", nt);
  bytes_t v;
  uint32_t rc = get_header(MAP_HTTP_CALL_RESPONSE_HEADERS, ":status", &v);
  logn("status rc", rc);
  if (rc == WASM_OK) { char l[64] = "status "; sb_cat(l, sizeof l, v.data, v.size); log_msg(LOG_INFO, l); }
  rc = get_buffer(BUFFER_HTTP_CALL_RESPONSE_BODY, 3, 5, &v);
  logn("body rc", rc);
  if (rc == WASM_OK) { char l[64] = "body "; sb_cat(l, sizeof l, v.data, v.size); log_msg(LOG_INFO, l); }
  rc = get_buffer(BUFFER_HTTP_CALL_RESPONSE_BODY, 0, 1000, &v);
  logn("body all", (uint32_t)v.size);
  char *pairs = NULL;
  size_t ps = 0;
  rc = proxy_get_header_map_pairs(MAP_HTTP_CALL_RESPONSE_HEADERS, &pairs, &ps);
  logn("pairs rc", rc);
  logn("pairs size", (uint32_t)ps);
  rc = proxy_get_header_map_pairs(7, &pairs, &ps);
  logn("trailers rc", rc);
  rc = get_header(MAP_REQUEST_HEADERS, ":path", &v);
  logn("req map in answer", rc);
  proxy_continue_stream(STREAM_REQUEST);
}

EXPORT(proxy_on_request_body)
uint32_t proxy_on_request_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  logn("rqb", size);
  if (has("/body-stop") && !eos) return 1;  /* StopIterationAndBuffer */
  if (has("/body-nobuf") && !eos) return 3;
  if (has("/body-watermark") && !eos) return 2;
  if (has("/body-bad")) return 9;
  return ACTION_CONTINUE;
}
EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  if (has("/close-resp")) { logn("close", proxy_close_stream(STREAM_RESPONSE)); return ACTION_CONTINUE; }
  if (has("/resp-local-continue")) { logn("l1", local(500, "x")); logn("cont", proxy_continue_stream(STREAM_RESPONSE)); }
  return ACTION_CONTINUE;
}
EXPORT(proxy_on_response_body)
uint32_t proxy_on_response_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  logn("rsb", size);
  if (has("/rsb-stop") && !eos) return 1;
  if (has("/rsb-close") && !eos) { logn("close", proxy_close_stream(STREAM_RESPONSE)); }
  return ACTION_CONTINUE;
}
EXPORT(proxy_on_log) void proxy_on_log(uint32_t ctx) { log_msg(LOG_INFO, "log"); }
