/*
 * trap: traps (unreachable) in on_request_headers when the request has x-trap; otherwise adds
 * x-trap-plugin: alive to the response. Used to compare failure policies.
 */
#include "proxy_wasm.h"

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  bytes_t value;
  if (get_header(MAP_REQUEST_HEADERS, "x-trap", &value) == WASM_OK) {
    log_msg(LOG_WARN, "trap: trapping");
    __builtin_trap();
  }
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  add_header_str(MAP_RESPONSE_HEADERS, "x-trap-plugin", "alive");
  return ACTION_CONTINUE;
}
