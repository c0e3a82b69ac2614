/*
 * resize: bodies that change length, through proxy_set_buffer_bytes' three shapes.
 *
 * Headers: removes content-length both ways (Envoy then streams the new lengths chunked).
 * Request body (buffered to the end): with request header x-partial, first replaces part of
 *           the body (start 0, size 1: "X" for the first byte) and logs the status; then
 *           prepends "<<" (start 0, size 0), appends ">>" (start = length, size 0) and logs the
 *           new length.
 * Response body (streamed): at the end of the stream appends "[end]".
 */
#include "proxy_wasm.h"

#define MAX_STREAMS 64
static uint32_t partial[MAX_STREAMS]; /* context ids of streams with x-partial */

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  remove_header(MAP_REQUEST_HEADERS, "content-length");
  bytes_t value;
  if (get_header(MAP_REQUEST_HEADERS, "x-partial", &value) == WASM_OK) {
    free(value.data);
    for (int i = 0; i < MAX_STREAMS; i++) {
      if (partial[i] == 0) {
        partial[i] = ctx;
        break;
      }
    }
  }
  return ACTION_CONTINUE;
}

static int take_partial(uint32_t ctx) {
  for (int i = 0; i < MAX_STREAMS; i++) {
    if (partial[i] == ctx) {
      partial[i] = 0;
      return 1;
    }
  }
  return 0;
}

EXPORT(proxy_on_response_headers)
uint32_t proxy_on_response_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  remove_header(MAP_RESPONSE_HEADERS, "content-length");
  return ACTION_CONTINUE;
}

static void log_number(const char *text, uint32_t value) {
  char line[96] = "";
  sb_cat(line, sizeof line, text, strlen(text));
  sb_u32(line, sizeof line, value);
  log_msg(LOG_INFO, line);
}

EXPORT(proxy_on_request_body)
uint32_t proxy_on_request_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  if (!eos) return ACTION_PAUSE;
  if (take_partial(ctx)) {
    log_number("resize: partial replace status ",
               proxy_set_buffer_bytes(BUFFER_REQUEST_BODY, 0, 1, "X", 1));
  }
  proxy_set_buffer_bytes(BUFFER_REQUEST_BODY, 0, 0, "<<", 2);
  proxy_set_buffer_bytes(BUFFER_REQUEST_BODY, size + 2, 0, ">>", 2);
  bytes_t body;
  get_buffer(BUFFER_REQUEST_BODY, 0, 1 << 24, &body);
  log_number("resize: request body now ", body.size);
  free(body.data);
  return ACTION_CONTINUE;
}

EXPORT(proxy_on_response_body)
uint32_t proxy_on_response_body(uint32_t ctx, uint32_t size, uint32_t eos) {
  if (eos) proxy_set_buffer_bytes(BUFFER_RESPONSE_BODY, size, 0, "[end]", 5);
  return ACTION_CONTINUE;
}
