/*
 * trap: traps (unreachable) in on_request_headers when the request has x-trap, in
 * on_request_body when the body starts with "trap", and in on_response_headers when the upstream
 * answers 418; otherwise adds x-trap-plugin: alive to the response. Used to compare failure
 * policies.
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

EXPORT(proxy_on_request_body)
uint32_t proxy_on_request_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  bytes_t head;
  if (size >= 4 && get_buffer(BUFFER_REQUEST_BODY, 0, 4, &head) == WASM_OK &&
      memcmp(head.data, "trap", 4) == 0) {
    log_msg(LOG_WARN, "trap: trapping in the request body");
    __builtin_trap();
  }
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  bytes_t status;
  if (get_header(MAP_RESPONSE_HEADERS, ":status", &status) == WASM_OK && status.size == 3 &&
      memcmp(status.data, "418", 3) == 0) {
    log_msg(LOG_WARN, "trap: trapping in the response headers");
    __builtin_trap();
  }
  free(status.data);
  add_header_str(MAP_RESPONSE_HEADERS, "x-trap-plugin", "alive");
  return ACTION_CONTINUE;
}
