/*
 * resize: bodies that change length, through proxy_set_buffer_bytes' three shapes.
 *
 * Headers: removes content-length both ways (Envoy then streams the new lengths chunked).
 * Request body (buffered to the end): with request header x-partial: <start>,<size>, first
 *           calls proxy_set_buffer_bytes(body, start, size, "X") and logs the status; then
 *           prepends "<<" (start 0, size 0), appends ">>" (start = length, size 0) and logs the
 *           new length.
 * Response body (streamed): at the end of the stream appends "[end]".
 */
#include "proxy_wasm.h"

#define MAX_STREAMS 64
static struct {
  uint32_t context, start, size;
} partial[MAX_STREAMS]; /* streams with x-partial */

static uint32_t parse_u32(const char **p, const char *end) {
  uint32_t v = 0;
  while (*p < end && **p >= '0' && **p <= '9') v = v * 10 + (*(*p)++ - '0');
  return v;
}

EXPORT(proxy_on_request_headers)
uint32_t proxy_on_request_headers(uint32_t ctx, uint32_t n, uint32_t eos) {
  remove_header(MAP_REQUEST_HEADERS, "content-length");
  bytes_t value;
  if (get_header(MAP_REQUEST_HEADERS, "x-partial", &value) == WASM_OK) {
    const char *p = value.data, *end = value.data + value.size;
    uint32_t start = parse_u32(&p, end);
    if (p < end) p++;
    uint32_t size = parse_u32(&p, end);
    free(value.data);
    for (int i = 0; i < MAX_STREAMS; i++) {
      if (partial[i].context == 0) {
        partial[i].context = ctx;
        partial[i].start = start;
        partial[i].size = size;
        break;
      }
    }
  }
  return ACTION_CONTINUE;
}

static int take_partial(uint32_t ctx, uint32_t *start, uint32_t *size) {
  for (int i = 0; i < MAX_STREAMS; i++) {
    if (partial[i].context == ctx) {
      partial[i].context = 0;
      *start = partial[i].start;
      *size = partial[i].size;
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
  uint32_t start, length;
  if (take_partial(ctx, &start, &length)) {
    log_number("resize: partial replace status ",
               proxy_set_buffer_bytes(BUFFER_REQUEST_BODY, start, length, "X", 1));
  }
  bytes_t body;
  get_buffer(BUFFER_REQUEST_BODY, 0, 1 << 24, &body);
  proxy_set_buffer_bytes(BUFFER_REQUEST_BODY, 0, 0, "<<", 2);
  proxy_set_buffer_bytes(BUFFER_REQUEST_BODY, body.size + 2, 0, ">>", 2);
  free(body.data);
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
