/*
 * stream_ops: stream control calls picked by the request's :path (scratch differential of
 * session 3, recorded from Envoy 1.40): /close-req, /close-req-pause (proxy_close_stream on the
 * request), /local-twice (two local replies), /local-continue, /local-continue-ret, /done,
 * /effective (proxy_set_effective_context to an unknown id), /status-bad (headers result 77),
 * /close-resp, /resp-local-continue, /rsb-stop, /rsb-close (response side), and for request
 * bodies /body-stop (1), /body-nobuf (3), /body-watermark (2) on the data frame, /body-bad (9).
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
  if (has("/status-bad")) { return 77; }
  return ACTION_CONTINUE;
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
