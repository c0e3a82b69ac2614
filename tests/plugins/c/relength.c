/*
 * relength: bodies that change length while content-length stays (recorded from Envoy 1.40):
 * paths containing grow-req / shrink-req / grow-resp / shrink-resp append "EXTRA" to, or replace
 * with "x", the request or response body.
 */
#include "proxy_wasm.h"
static char path[64];
EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  bytes_t v;
  path[0] = 0;
  if (get_header(MAP_REQUEST_HEADERS, ":path", &v) == WASM_OK) { memcpy(path, v.data, v.size < 63 ? v.size : 63); path[v.size < 63 ? v.size : 63] = 0; }
  return ACTION_CONTINUE;
}
EXPORT(proxy_on_request_body)
uint32_t proxy_on_request_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  if (size && strstr(path, "grow-req")) proxy_set_buffer_bytes(BUFFER_REQUEST_BODY, size, 0, "EXTRA", 5);
  if (size && strstr(path, "shrink-req")) proxy_set_buffer_bytes(BUFFER_REQUEST_BODY, 0, size, "x", 1);
  return ACTION_CONTINUE;
}
EXPORT(proxy_on_response_body)
uint32_t proxy_on_response_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  if (size && strstr(path, "grow-resp")) proxy_set_buffer_bytes(BUFFER_RESPONSE_BODY, size, 0, "EXTRA", 5);
  if (size && strstr(path, "shrink-resp")) proxy_set_buffer_bytes(BUFFER_RESPONSE_BODY, 0, size, "x", 1);
  return ACTION_CONTINUE;
}
